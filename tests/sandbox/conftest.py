"""Sandbox test fixtures: a running sandbox, a recording callback receiver, an API session."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from flask import Flask, Response, request
from werkzeug.serving import make_server

from app.sandbox.server import QuietRequestHandler, SandboxServer

FROM = "+19195551212"
TO = "+19195551213"


@dataclass
class Received:
    """One request the receiver got."""

    method: str
    path: str
    raw_uri: str
    query_string: str
    args: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    at: float  # time.monotonic() on arrival


class Receiver:
    """A small HTTP server that records every request; paths can be told to fail or stall."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.behaviour: dict[str, tuple[int, float]] = {}  # path -> (status, delay seconds)
        self._lock = threading.Condition()
        self._release = threading.Event()
        app = Flask("callback_receiver")

        @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
        @app.route("/<path:path>", methods=["GET", "POST"])
        def catch_all(path: str) -> Response:
            body = request.get_data()
            item = Received(
                method=request.method,
                path=request.path,
                raw_uri=request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI", ""),
                query_string=request.query_string.decode("ascii"),
                args=request.args.to_dict(),
                headers=dict(request.headers),
                body=body,
                json=request.get_json(silent=True),
                at=time.monotonic(),
            )
            with self._lock:
                self.received.append(item)
                self._lock.notify_all()
            status, delay = self.behaviour.get(request.path, (200, 0.0))
            if delay:
                self._release.wait(delay)  # released early when the receiver stops
            return Response("ok", status=status)

        self._server = make_server(
            "127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/cb", user: str | None = None, password: str | None = None) -> str:
        """Absolute URL of a path, optionally with Basic credentials as user-info."""
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        """Requests received on one path."""
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 5.0) -> list[Received]:
        """Wait until ``count`` requests (on ``path``) arrived; return them."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self.received if path is None or r.path == path]
                if len(got) >= count:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} callbacks on {path}, got {len(got)}")
                self._lock.wait(remaining)

    def stop(self) -> None:
        """Release stalled handlers and stop serving."""
        self._release.set()
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A recording callback receiver on 127.0.0.1:0."""
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def make_sandbox(receiver: Receiver) -> Iterator[Callable[..., SandboxServer]]:
    """Start sandboxes with options (default: perfect, seed 7, 0-5 ms gaps); all stopped after."""
    started: list[SandboxServer] = []

    def make(**options: Any) -> SandboxServer:
        settings = {"scenario": "perfect", "seed": 7, "delay_min_ms": 0, "delay_max_ms": 5}
        settings.update(options)
        server = SandboxServer(**settings).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., SandboxServer]) -> SandboxServer:
    """A perfect-scenario sandbox with fast events."""
    return make_sandbox()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A plain HTTP session (closed after the test)."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


@pytest.fixture
def api(sandbox: SandboxServer, http: requests.Session) -> requests.Session:
    """The HTTP session authenticated against ``sandbox``."""
    http.auth = sandbox.auth
    return http


def message(**fields: Any) -> dict[str, Any]:
    """A valid SMS body with ``fields`` replaced (``None`` values are sent as JSON null)."""
    body: dict[str, Any] = {"from": FROM, "to": TO, "text": "hello"}
    body.update(fields)
    return body


@pytest.fixture
def send(api: requests.Session, sandbox: SandboxServer) -> Callable[..., requests.Response]:
    """POST one body (a dict or a list) to the sandbox's messages URL."""

    def post(body: Any) -> requests.Response:
        return api.post(sandbox.messages_url, json=body, timeout=10)

    return post


@pytest.fixture
def body() -> Callable[..., dict[str, Any]]:
    """Factory of valid message bodies."""
    return message


def assert_error(response: requests.Response, status: int, category: str, code: str) -> dict:
    """Catapult's error shape: JSON, category/code/message, request details."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()
    assert error["category"] == category
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    names = [d["name"] for d in error["details"]]
    for name in ("requestMethod", "remoteAddress", "requestPath"):
        assert name in names, error
    details = {d["name"]: d["value"] for d in error["details"]}
    assert not details["requestPath"].startswith("/")
    return error


@pytest.fixture
def check_error() -> Callable[..., dict]:
    """The error-shape assertion as a fixture."""
    return assert_error
