"""Structured logs: JSON lines from every process, one per request and one per dispatcher
batch, never a secret, a credential or a whole phone number."""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import time

import requests

from app.logs import JsonFormatter, register_secrets, scrub
from app.requestlog import RequestRecord, access_fields, request_id
from app.sandbox.server import SandboxServer
from tests.deploy.conftest import json_lines, wait_for_lines
from tests.reliability.conftest import wait_for
from tests.servers import relay_env


def test_scrub_masks_secrets_credentials_in_urls_and_numbers():
    register_secrets({"CALLBACK_USERNAME": "hook-user", "CALLBACK_PASSWORD": "p@ss w0rd!x"})
    text = scrub(
        "POST https://hook-user:p%40ss%20w0rd%21x@relay.example/callbacks/catapult "
        "from=%2B19195550123 to +19195550124 (9195550125) pw p@ss w0rd!x, 204 bytes, id 12345"
    )
    assert text == (
        "POST https://***@relay.example/callbacks/catapult "
        "from=***0123 to ***0124 (***0125) pw ***, 204 bytes, id 12345"
    )
    basic = base64.b64encode(b"hook-user:p@ss w0rd!x").decode()
    assert scrub(f"Authorization: Basic {basic}") == "Authorization: Basic ***"
    # Ids of the relay and the carrier are not numbers.
    assert scrub("rm-01kb3m2x9zq7 m-abc1234567def") == "rm-01kb3m2x9zq7 m-abc1234567def"


def _line(formatter, message, *args, **extra) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{secrets.token_hex(4)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning(message, *args, extra=extra)
    return json.loads(stream.getvalue())


def test_a_line_is_one_json_object_with_its_fields_scrubbed():
    formatter = JsonFormatter()
    line = _line(formatter, "send to %s failed", "+15555550123", numbers=["+15555550124"])
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert line["message"] == "send to ***0123 failed" and line["numbers"] == ["***0124"]
    assert line["level"] == "WARNING" and isinstance(line["pid"], int)
    # The request line (GunicornLogger.access) is built from checked fields, written as given.
    environ = {
        "relay.request_id": "a" * 32,
        "REQUEST_METHOD": "GET",
        "relay.route": "/api/messages/<message_id>",
        "REMOTE_ADDR": "127.0.0.1",
    }

    def request_line(environ, seconds: float) -> dict:
        record = RequestRecord("gunicorn.access", access_fields(environ, 404, 120, seconds))
        assert record.getMessage() == "request" and record.levelname == "INFO"
        return json.loads(formatter.format(record))

    line = request_line(environ, 0.00123)
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert line["route"] == "/api/messages/<message_id>" and line["latency_ms"] == 1.23
    assert line["request_id"] == "a" * 32 and line["status"] == 404 and "path" not in line
    # Unmatched: the path is the client's text, scrubbed.
    environ.pop("relay.route")
    environ["PATH_INFO"] = "/nothing/+15555550199"
    assert request_line(environ, 0.0)["path"] == "/nothing/***0199"


def test_request_ids_are_kept_when_plain_and_replaced_otherwise():
    assert request_id("0123abcdef0123abcdef0123abcdef01") == "0123abcdef0123abcdef0123abcdef01"
    assert request_id("trace-1:a.b_c") == "trace-1:a.b_c"
    for bad in (None, "", "x" * 129, "has space", '"quoted"', "15555550123", "id-+15555550123"):
        new = request_id(bad)
        assert new != bad and len(new) == 32


def test_every_response_says_its_request_id(client):
    answer = client.get("/healthz")
    assert len(answer.headers["X-Request-ID"]) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "abc"}).headers["X-Request-ID"] == "abc"


def test_an_end_to_end_run_logs_no_secret_and_no_whole_number(tmp_path, sqlite_db, processes):
    """gunicorn (2 workers) + the worker role + the sandbox (hostile), with secrets of its own,
    some requests that go wrong on purpose; then every line of every log is read."""
    creds = {
        name: f"{name.lower()}-{secrets.token_urlsafe(12)}"
        for name in (
            "CALLBACK_USERNAME",
            "CALLBACK_PASSWORD",
            "API_KEYS",
            "DASHBOARD_USERNAME",
            "DASHBOARD_PASSWORD",
            "SECRET_KEY",
        )
    }
    carrier = {"user_id": f"u-{secrets.token_hex(6)}", "token": secrets.token_urlsafe(12)}
    carrier["secret"] = secrets.token_urlsafe(12)
    numbers = ["+19195550100", "+19195550101"] + [f"+1919557{i:04d}" for i in range(20)]
    with SandboxServer(scenario="hostile", seed=31, **carrier) as sandbox:
        env = dict(
            DISPATCH="worker",
            PUBLIC_BASE_URL="{url}",
            CATAPULT_API_URL=sandbox.url,
            CATAPULT_USER_ID=carrier["user_id"],
            CATAPULT_API_TOKEN=carrier["token"],
            CATAPULT_API_SECRET=carrier["secret"],
            RECONCILE_AFTER_S="1",
            **creds,
        )
        relay = processes.web(sqlite_db, workers=2, name="web", **env)
        worker_env = relay_env(sqlite_db, tmp_path / "journal-0", **env)
        worker_env["PUBLIC_BASE_URL"] = relay.url
        worker = processes.worker(worker_env, "worker")
        api = {"Authorization": f"Bearer {creds['API_KEYS']}"}
        batch = [
            {
                "from": numbers[i % 2],
                "to": numbers[2 + i],
                "text": f"hello {i}",
                "callbackHttpMethod": "GET" if i % 3 == 0 else "POST",
            }
            for i in range(20)
        ]
        answer = requests.post(f"{relay.url}/api/messages", json=batch, headers=api, timeout=10)
        assert answer.status_code == 202
        # What goes wrong: bad callback credentials, a bad API key, numbers in query strings
        # and paths, the dashboard with its credentials.
        bad = requests.post(
            f"{relay.url}/callbacks/catapult",
            json={"messageId": "m-x", "from": numbers[0]},
            auth=(creds["CALLBACK_USERNAME"], "wrong"),
            timeout=10,
        )
        assert bad.status_code == 401
        assert requests.get(f"{relay.url}/api/messages", timeout=10).status_code == 401
        listing = requests.get(
            f"{relay.url}/api/messages", params={"to": numbers[2]}, headers=api, timeout=10
        )
        assert listing.status_code == 200
        unknown = requests.get(f"{relay.url}/api/messages/{numbers[3]}", headers=api, timeout=10)
        assert unknown.status_code == 404
        assert requests.get(f"{relay.url}/nothing/{numbers[4]}", timeout=10).status_code == 404
        dashboard = requests.get(
            f"{relay.url}/dashboard/",
            auth=(creds["DASHBOARD_USERNAME"], creds["DASHBOARD_PASSWORD"]),
            timeout=10,
        )
        assert dashboard.status_code == 200
        wait_for(lambda: len(sandbox.store.records("out")) >= 20, timeout=30)
        sandbox.wait_idle(timeout=60)
        time.sleep(1.5)  # a reconcile pass or two
        attempts = requests.get(f"{sandbox.url}/sandbox/callbacks", timeout=10).json()
        answered = [a for a in attempts["callbacks"] if a["statusCode"]]
        worker.stop()

    def callbacks(lines):
        return [line for line in lines if str(line.get("route")).startswith("/callbacks/")]

    web = wait_for_lines(relay.log_path, lambda lines: len(callbacks(lines)) >= len(answered) + 1)
    dispatched = json_lines(worker.log_path)
    # One request line per request, with what the receiver made of each callback.
    lines = callbacks(web)
    assert len(lines) == len(answered) + 1
    assert {line["via"] for line in lines} == {"primary", "fallback"}
    assert all(line["request_id"] and line["latency_ms"] >= 0 for line in lines)
    assert [line["status"] for line in lines if line["outcome"] == "unauthorized"] == [401]
    assert {line["outcome"] for line in lines} >= {"applied", "unauthorized"}
    routes = {line.get("route") for line in web if line.get("message") == "request"}
    assert {"/api/messages", "/api/messages/<message_id>", None} <= routes
    # One line per dispatcher batch, its numbers masked.
    batches = [line for line in dispatched if line["message"] == "dispatch batch"]
    assert sum(line["size"] for line in batches) == 20
    assert {n for line in batches for n in line["from_numbers"]} == {"***0100", "***0101"}
    # Nothing secret, nothing personal, in any line of either process.
    forbidden = [*creds.values(), carrier["token"], carrier["secret"]]
    forbidden += [
        base64.b64encode(f"{a}:{b}".encode()).decode()
        for a, b in (
            (creds["CALLBACK_USERNAME"], creds["CALLBACK_PASSWORD"]),
            (creds["DASHBOARD_USERNAME"], creds["DASHBOARD_PASSWORD"]),
            (carrier["token"], carrier["secret"]),
        )
    ]
    forbidden += [number[2:] for number in numbers]  # the national digits, in any encoding
    for path in (relay.log_path, worker.log_path):
        text = path.read_text()
        assert not [item for item in forbidden if item in text], path.name
