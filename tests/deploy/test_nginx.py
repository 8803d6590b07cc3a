"""deploy/nginx.conf does what its comments say: rendered by deploy/render_nginx.py and run by
a real nginx in front of small recording upstreams (the relay itself is in test_scale_out)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest
import requests

from tests.deploy.nginx import Nginx, free_port, render
from tests.servers import ROOT, ServedApp


class Recorder:
    """An upstream that answers ``status`` and remembers every request it saw."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.seen: list[dict] = []
        self.served = ServedApp().start(self)
        self.address = self.served.url.removeprefix("http://")

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k[:5] == "HTTP_"
        }
        self.seen.append(
            {
                "method": environ["REQUEST_METHOD"],
                "path": environ["PATH_INFO"],
                "query": environ.get("QUERY_STRING", ""),
                "body": len(body),
                "headers": headers,
            }
        )
        start_response(f"{self.status} X", [("Content-Type", "application/json")])
        return [json.dumps({"ok": True}).encode()]

    def stop(self) -> None:
        self.served.stop()


class Dropper:
    """An upstream that reads each request whole and closes the connection without an answer:
    an instance that died after taking the request (it may have committed it)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.taken: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536) or b"!"
                        if data.endswith(b"!"):
                            break
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    while length and len(body) < int(length.group(1)):
                        body += conn.recv(65536)
                except OSError:
                    continue
                if head:
                    self.taken.append(head.split(b" ", 2)[1].decode())

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def recorder():
    upstream = Recorder()
    yield upstream
    upstream.stop()


def test_render_refuses_what_nginx_would_misread(tmp_path):
    out = tmp_path / "nginx.conf"
    assert render({}, out).returncode == 2
    bad = render({"RELAY_UPSTREAMS": "127.0.0.1:1; include /etc/passwd"}, out)
    assert bad.returncode == 2 and "RELAY_UPSTREAMS" in bad.stderr
    bad = render({"RELAY_UPSTREAMS": "127.0.0.1:1", "MAX_BODY_BYTES": "1m"}, out)
    assert bad.returncode == 2 and "MAX_BODY_BYTES" in bad.stderr
    assert not out.exists()
    good = render({"RELAY_UPSTREAMS": "127.0.0.1:1,unix:/run/relay.sock"}, out)
    assert good.returncode == 0, good.stderr
    text = out.read_text()
    assert "{{" not in text
    assert "server unix:/run/relay.sock max_fails=1 fail_timeout=5s;" in text
    assert text.count("server 127.0.0.1:1 max_fails=1 fail_timeout=5s;") == 2  # both pools


def test_probe_renders_instances_whose_readyz_fails_down(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_nginx", ROOT / "deploy/render_nginx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ready, unready = Recorder(200), Recorder(503)
    dead = f"127.0.0.1:{free_port()}"
    try:
        env = {"RELAY_UPSTREAMS": f"{ready.address},{unready.address},{dead}"}
        text = module.render(env, probe=True)
        assert f"server {ready.address} max_fails=1 fail_timeout=5s;" in text
        assert f"server {unready.address} max_fails=1 fail_timeout=5s down;" in text
        assert f"server {dead} max_fails=1 fail_timeout=5s down;" in text
        # A pool with no ready instance stays whole: nginx keeps trying rather than refusing.
        text = module.render({"RELAY_UPSTREAMS": f"{unready.address},{dead}"}, probe=True)
        assert " down;" not in text
    finally:
        ready.stop()
        unready.stop()


def test_requests_are_buffered_bounded_and_forwarded_with_their_id(recorder):
    with Nginx([recorder.address]) as nginx:
        # The longest GET callback (2048 emoji, ~25 KB percent-encoded) passes whole.
        query = "text=" + "%F0%9F%98%80" * 2048 + "&messageId=m-long"
        answer = requests.get(f"{nginx.url}/callbacks/catapult?{query}", timeout=10)
        assert answer.status_code == 200 and recorder.seen[-1]["query"] == query
        # Callbacks have their own, smaller limit; the API the relay's MAX_BODY_BYTES.
        big = b"x" * (70 << 10)
        count = len(recorder.seen)
        answer = requests.post(f"{nginx.url}/callbacks/catapult", data=big, timeout=10)
        assert answer.status_code == 413 and len(recorder.seen) == count
        assert requests.post(f"{nginx.url}/api/messages", data=big, timeout=10).status_code == 200
        assert recorder.seen[-1]["body"] == len(big)
        too_big = b"x" * ((1 << 20) + 1)
        assert (
            requests.post(f"{nginx.url}/api/messages", data=too_big, timeout=10).status_code == 413
        )
        # Forwarded headers: appended X-Forwarded-For, scheme, a request id (the client's when
        # it sent one), and no prefix a client made up.
        answer = requests.get(
            f"{nginx.url}/api/messages",
            headers={"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Prefix": "/evil"},
            timeout=10,
        )
        seen = recorder.seen[-1]["headers"]
        assert seen["x-forwarded-for"] == "198.51.100.1, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http" and "x-forwarded-prefix" not in seen
        assert re.fullmatch(r"[0-9a-f]{32}", seen["x-request-id"])
        assert answer.headers["X-Request-ID"] == seen["x-request-id"]
        answer = requests.get(f"{nginx.url}/healthz", headers={"X-Request-ID": "abc-1"}, timeout=10)
        assert recorder.seen[-1]["headers"]["x-request-id"] == "abc-1"
        assert answer.headers["X-Request-ID"] == "abc-1"
        # Per-instance metrics are not served through the balancer; the fallback listener only
        # serves callbacks (and its pool's health).
        count = len(recorder.seen)
        assert requests.get(f"{nginx.url}/metrics", timeout=10).status_code == 404
        assert requests.get(f"{nginx.fallback_url}/api/messages", timeout=10).status_code == 404
        assert len(recorder.seen) == count
        assert requests.post(f"{nginx.fallback_url}/callbacks/catapult/fallback", timeout=10).ok
        assert recorder.seen[-1]["path"] == "/callbacks/catapult/fallback"
        # A client that stalls in its headers is cut off by nginx within 5 s; the instance
        # never sees it.
        count = len(recorder.seen)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=15) as sock:
            sock.sendall(b"POST /callbacks/catapult HTTP/1.1\r\nHost: relay\r\n")
            rest = sock.recv(4096)  # b"" (closed) or a 408
        elapsed = time.monotonic() - started
        assert 4.0 < elapsed < 7.5 and (rest == b"" or b" 408 " in rest), (elapsed, rest)
        assert len(recorder.seen) == count
        # Nothing of a GET callback's query string reaches nginx's access log.
        log = nginx.access_log.read_text()
        assert "m-long" not in log and "%F0" not in log
        assert all(json.loads(line)["request_id"] for line in log.splitlines())


def test_what_is_retried_on_the_next_instance_when_one_drops_requests(recorder):
    """Round robin over an instance that drops every request after reading it and one that
    answers (max_fails=0 keeps the dropper in rotation): callbacks, GETs and keyed sends go
    to the next instance; a send without Idempotency-Key is not resent."""
    dropper = Dropper()
    try:
        with Nginx([dropper.address, recorder.address], UPSTREAM_MAX_FAILS="0") as nginx:

            def send(method, path, **kwargs):
                return [
                    requests.request(method, f"{nginx.url}{path}", timeout=10, **kwargs).status_code
                    for _ in range(8)
                ]

            def counts(path, run):
                before = (dropper.taken.count(path), _count(recorder, path))
                statuses = run()
                return (
                    statuses,
                    dropper.taken.count(path) - before[0],
                    _count(recorder, path) - before[1],
                )

            statuses, dropped, answered = counts(
                "/callbacks/catapult", lambda: send("POST", "/callbacks/catapult", json={"a": 1})
            )
            assert statuses == [200] * 8 and dropped >= 1 and answered == 8
            statuses, dropped, answered = counts(
                "/api/messages", lambda: send("GET", "/api/messages")
            )
            assert statuses == [200] * 8 and dropped >= 1 and answered == 8
            statuses, dropped, answered = counts(
                "/api/messages",
                lambda: send("POST", "/api/messages", json={}, headers={"Idempotency-Key": "k1"}),
            )
            assert statuses == [200] * 8 and dropped >= 1 and answered == 8
            statuses, dropped, answered = counts(
                "/api/messages", lambda: send("POST", "/api/messages", json={})
            )
            assert dropped >= 1 and statuses.count(502) == dropped and answered == 8 - dropped
    finally:
        dropper.stop()


def _count(recorder: Recorder, path: str) -> int:
    return sum(1 for seen in recorder.seen if seen["path"] == path)
