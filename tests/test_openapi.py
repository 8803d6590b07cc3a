"""The OpenAPI document tells the truth: it lists every route, every error is Catapult-shaped,
the send schema agrees with the send rules, and schemathesis finds nothing against a live relay.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import timedelta

import jsonschema_rs
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app import create_app, send_rules
from app.dispatcher import Dispatcher
from app.extensions import db
from app.models import CallbackEvent, Message, utcnow
from app.sandbox.server import SandboxServer
from app.schemas import EXAMPLE_CARRIER_ID, EXAMPLE_RELAY_ID
from tests.conftest import API_KEY, CALLBACK_PASSWORD, CALLBACK_USER, close_app, make_config
from tests.servers import ServedApp

pytestmark = pytest.mark.both_backends

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
CALLBACK_AUTH = (CALLBACK_USER, CALLBACK_PASSWORD)
CONFIG = os.path.join(os.path.dirname(__file__), "schemathesis.toml")
# Test cases per operation and phase; with 13 operations that is well over 1,000 cases.
MAX_EXAMPLES = 60
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261201"))


def spec_of(client) -> dict:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.get_json()


# ---------------------------------------------------------------- the document itself


def test_every_route_is_documented_with_its_methods(app, client):
    """Every URL rule but the dashboard's (HTML for people) is in the document, and nothing
    is in the document that the app does not route."""
    spec = spec_of(client)
    routed = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("dashboard."):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        methods = {m.lower() for m in rule.methods} - {"head", "options"}
        routed.setdefault(path, set()).update(methods)
    documented = {
        path: {m for m in item if m in ("get", "post", "put", "patch", "delete")}
        for path, item in spec["paths"].items()
    }
    assert documented == routed


def _responses(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = spec["components"]["responses"][response["$ref"].split("/")[-1]]
                yield path, method, int(status), response


def test_every_error_is_documented_in_catapults_shape(client):
    spec = spec_of(client)
    # /readyz answers its readiness body with its 503: that is for balancers, not an error.
    errors = [(p, m, s, r) for p, m, s, r in _responses(spec) if s >= 400 and p != "/readyz"]
    assert len(errors) > 40
    for path, method, status, response in errors:
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/CatapultError"}, (path, method, status)
    error = spec["components"]["schemas"]["CatapultError"]
    assert set(error["required"]) == {"category", "code", "message", "details"}
    assert error["properties"]["code"]["type"] == "string"
    assert "Error" not in spec["components"]["schemas"]  # flask-smorest's own, code an integer


def test_security_headers_and_links(client):
    spec = spec_of(client)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["callbackBasic"]["scheme"] == "basic"
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            expected = (
                [{"callbackBasic": []}]
                if path.startswith("/callbacks/")
                else [{"bearerAuth": []}]
                if path.startswith("/api/") and path != "/api/openapi.json"
                else []
            )
            assert operation["security"] == expected, (path, method)
            statuses = {int(s) for s in operation["responses"]}
            assert 413 in statuses, (path, method)
            if expected:
                assert {401, 413} <= statuses, (path, method)
    send = spec["paths"]["/api/messages"]["post"]
    assert {"200", "201", "202", "400", "401", "403", "413", "415", "422", "503"} - {"200"} <= set(
        send["responses"]
    )
    created = send["responses"]["201"]
    assert created["headers"]["Location"] == {"$ref": "#/components/headers/Location"}
    assert created["links"]["GetMessage"]["operationId"] == "getMessage"
    assert created["links"]["GetMessage"]["parameters"] == {"message_id": "$response.body#/id"}
    unavailable = spec["components"]["responses"]["SERVICE_UNAVAILABLE"]
    assert unavailable["headers"]["Retry-After"] == {"$ref": "#/components/headers/RetryAfter"}
    reconcile = spec["paths"]["/api/messages/{message_id}/reconcile"]["post"]
    assert {"404", "409", "502"} <= set(reconcile["responses"])


def test_document_validates_as_openapi_3_1(client):
    """Against the OpenAPI 3.1 meta-schema (the copy schemathesis ships and checks with)."""
    from schemathesis.specs.openapi import definitions

    spec = spec_of(client)
    assert spec["openapi"] == "3.1.0"
    errors = [str(e) for e in definitions.OPENAPI_31_VALIDATOR.iter_errors(spec)]
    assert errors == []
    operations = [
        operation
        for item in spec["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    ]
    assert len(operations) >= 14  # the routes of today; test above: one per routed method
    ids = [operation["operationId"] for operation in operations]
    assert len(ids) == len(set(ids)), "every operation has an operationId of its own"


# ---------------------------------------------------------------- the send schema = the rules


@pytest.fixture(scope="module")
def send_validator(tmp_path_factory):
    """The document's ``SendRequest`` schema as a JSON Schema validator."""
    app = create_app(make_config(tmp_path_factory.mktemp("spec")))
    spec = app.test_client().get("/api/openapi.json").get_json()
    close_app(app)
    schema = {"$ref": "#/components/schemas/SendRequest", "components": spec["components"]}
    return jsonschema_rs.Draft202012Validator(schema)


def accepted_by_rules(body) -> bool:
    try:
        send_rules.validate_message(body)
    except send_rules.SendRuleError:
        return False
    return True


TRICKY_TEXT = ["", " ", "\x1c", "\u3000", "\ufeff", "\x00", "a\x00", "\u2028x", "é", "🙂", "\t\n"]
TRICKY_URL = [
    "https://media.example.com/a.png",
    "HTTP://127.0.0.1:65535/x",
    "http://localhost:65536/x",
    "http://[::1]/a",
    "https://bücher.example/a.png",
    "https://example.com/ü.png",
    "https://user:pa%20ss@example.com/a?b=c#d",
    "https://exa mple.com/a",
    "ftp://example.com/a",
    "http://",
    "https://example.com/a\n",
    "javascript:alert(1)",
]
TRICKY_CHOICE = ["all", "ALL", "None", "error ", "GET", "post", "poſt", "poﬆ", "GEt", "", "x"]
TRICKY_TIMEOUT = [1, 10000, 0, 10001, "2000", " 2000 ", "+5", "-5", "0010000", "1e3", 2000.0, True]


@pytest.mark.parametrize("text", TRICKY_TEXT)
@pytest.mark.parametrize("media", [None, "https://media.example.com/a.png"])
def test_schema_agrees_with_the_rules_on_text(send_validator, text, media):
    body = {"from": "+19195551212", "to": "+19195551313", "text": text, "media": media}
    assert send_validator.is_valid(body) == accepted_by_rules(body), body


@pytest.mark.parametrize("url", TRICKY_URL)
def test_schema_agrees_with_the_rules_on_media(send_validator, url):
    for media in (url, [url], ["https://media.example.com/a.png", url]):
        body = {"from": "+19195551212", "to": "+19195551313", "media": media}
        assert send_validator.is_valid(body) == accepted_by_rules(body), body


@pytest.mark.parametrize("value", TRICKY_CHOICE)
@pytest.mark.parametrize("key", ["receiptRequested", "callbackHttpMethod"])
def test_schema_agrees_with_the_rules_on_choices(send_validator, key, value):
    body = {"from": "+19195551212", "to": "12345", "text": "hi", key: value}
    assert send_validator.is_valid(body) == accepted_by_rules(body), body


@pytest.mark.parametrize("value", TRICKY_TIMEOUT)
def test_schema_agrees_with_the_rules_on_timeouts(send_validator, value):
    body = {"from": "+19195551212", "to": "12345", "text": "hi", "callbackTimeout": value}
    assert send_validator.is_valid(body) == accepted_by_rules(body), body


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-20000, 20000),
    st.text(max_size=12),
    st.sampled_from(TRICKY_TEXT + TRICKY_URL + TRICKY_CHOICE + ["+19195551212", "12345"]),
    st.lists(st.sampled_from(TRICKY_URL), max_size=2),
)
_keys = st.sampled_from([*send_rules.FIELD_ORDER, *send_rules.REFUSED, "x"])


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(body=st.dictionaries(_keys, _values, max_size=6))
def test_schema_agrees_with_the_rules_on_any_object(send_validator, body):
    """Whatever object a client sends, the document and the send rules agree on it."""
    assert send_validator.is_valid(body) == accepted_by_rules(body), body


# ---------------------------------------------------------------- schemathesis, live


class LiveRelay:
    """The relay on 127.0.0.1 (port from the OS) with the sandbox as its carrier, and a
    database seeded through the real flow: sends, receipts, odd callbacks, reconciles."""

    def __init__(self, tmp_path, db_url):
        self.sandbox = SandboxServer().start()
        self.served = ServedApp()
        url = self.served.url
        settings = {
            "DATABASE_URL": db_url,
            "PUBLIC_BASE_URL": url,
            "FALLBACK_BASE_URL": url,
            "CATAPULT_API_URL": self.sandbox.url,
            "CATAPULT_USER_ID": self.sandbox.user_id,
            "CATAPULT_API_TOKEN": self.sandbox.token,
            "CATAPULT_API_SECRET": self.sandbox.secret,
            "CALLBACK_TIMEOUT_MS": 3000,
        }
        self.app = create_app(make_config(tmp_path, **settings))
        with self.app.app_context():
            db.create_all()
        self.served.start(self.app)
        self.url = url

    def seed(self) -> None:
        sms = {"from": "+19195550100", "text": "hello"}
        self._post(
            [{**sms, "to": f"+1919555{1000 + i}", "receiptRequested": "all"} for i in range(4)]
        )
        self._post({**sms, "to": "+19195552000", "tag": "order-7", "callbackHttpMethod": "GET"})
        self._post({**sms, "to": "+19195552001", "media": "https://media.example.com/a.png"})
        dispatcher = Dispatcher(self.app)
        deadline = time.monotonic() + 20
        while (
            self._count(Message.status.in_(("queued", "sending"))) and time.monotonic() < deadline
        ):
            dispatcher.run_once()
        self.sandbox.wait_idle(20)
        # The document's example ids are real here: one the carrier knows, one it does not.
        sent = requests.post(
            self.sandbox.messages_url,
            json={"from": "+19195550100", "to": "+19195552002", "text": "example"},
            auth=self.sandbox.auth,
            timeout=10,
        )
        known = sent.headers["Location"].rsplit("/", 1)[-1]
        self._insert(EXAMPLE_RELAY_ID, known)
        self._insert(None, EXAMPLE_CARRIER_ID)
        # Callbacks the carrier (or someone with its credentials) may send: stored all the same.
        cb = self.url + "/callbacks/catapult"
        requests.post(cb, data=b"{not json", auth=CALLBACK_AUTH, timeout=5)
        requests.post(
            cb + "/fallback", json={"messageId": "m-nobody"}, auth=CALLBACK_AUTH, timeout=5
        )
        requests.get(
            cb,
            params={
                "messageId": "m-inbound0000000000000000",
                "direction": "in",
                "state": "received",
                "from": "+19195550101",
                "to": "+19195550100",
                "text": "reply",
            },
            auth=CALLBACK_AUTH,
            timeout=5,
        )
        assert (
            requests.post(
                f"{self.url}/api/messages/{EXAMPLE_RELAY_ID}/reconcile", headers=HEADERS, timeout=10
            ).status_code
            == 200
        )

    def _post(self, body) -> None:
        response = requests.post(f"{self.url}/api/messages", json=body, headers=HEADERS, timeout=10)
        assert response.status_code in (201, 202), response.text

    def _insert(self, message_id, carrier_id) -> None:
        now = utcnow() - timedelta(minutes=1)
        with self.app.app_context():
            message = Message(
                direction="out",
                from_number="+19195550100",
                to_number="+19195552002",
                text="example",
                status="accepted",
                carrier_message_id=carrier_id,
                created_at=now,
                updated_at=now,
                accepted_at=now,
                attempts=1,
                code_mismatch=False,
            )
            if message_id:
                message.id = message_id
            db.session.add(message)
            db.session.commit()

    def _count(self, *where) -> int:
        with self.app.app_context():
            return db.session.scalar(select(func.count()).select_from(Message).where(*where))

    def events(self) -> int:
        with self.app.app_context():
            return db.session.scalar(select(func.count()).select_from(CallbackEvent))

    def close(self) -> None:
        self.served.stop()
        close_app(self.app)
        self.sandbox.stop()


@pytest.fixture
def live(tmp_path, db_url):
    relay = LiveRelay(tmp_path, db_url)
    try:
        relay.seed()
        yield relay
    finally:
        relay.close()


@pytest.mark.timeout(300)
def test_schemathesis_finds_nothing_against_a_live_relay(live, tmp_path, backend, capsys):
    """``schemathesis run --checks all`` over real HTTP, every phase (examples, coverage,
    fuzzing, stateful through the links), a fixed seed: zero failures in 1,000+ cases."""
    before = live.events()
    env = {
        **os.environ,
        "RELAY_API_KEY": API_KEY,
        "RELAY_CALLBACK_USERNAME": CALLBACK_USER,
        "RELAY_CALLBACK_PASSWORD": CALLBACK_PASSWORD,
    }
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        CONFIG,
        "--no-color",
        "run",
        f"{live.url}/api/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--workers",
        "1",
    ]
    started = time.monotonic()
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280
    )
    seconds = time.monotonic() - started
    output = run.stdout + run.stderr
    counted = re.search(r"(\d+) generated, (\d+) passed", output)
    line = (
        f"schemathesis ({backend}): seed {SEED}, "
        f"{counted[1] if counted else '?'} cases, {seconds:.1f} s, exit {run.returncode}"
    )
    with capsys.disabled():
        print(f"\n{line}")
    assert run.returncode == 0, output[-6000:]
    assert counted and counted[1] == counted[2], output[-3000:]
    assert int(counted[1]) >= 1000, line
    assert re.search(rf"Seed: {SEED}", output)
    # The callback operations were fuzzed with the real credentials: they stored what came.
    assert live.events() > before + 100


def test_the_document_is_json_the_standard_library_reads(client):
    """No NaN or Infinity anywhere: strict JSON."""
    text = client.get("/api/openapi.json").get_data(as_text=True)
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the document"))
