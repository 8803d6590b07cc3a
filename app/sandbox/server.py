"""``SandboxServer``: the sandbox on a real socket in a background thread (tests, CLI, demo)."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from . import EXTENSION, create_sandbox_app
from .core import Sandbox
from .store import CallbackLog, MessageStore


class QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler without the per-request access log line (errors are still logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


class SandboxServer:
    """Runs ``create_sandbox_app(**options)`` on ``host``:``port`` (0 = a free port).

    Use as a context manager, or call ``start()`` / ``stop()``.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, log_requests: bool = False, **options: Any
    ) -> None:
        self.host = host
        self.requested_port = port
        self.log_requests = log_requests
        self.app: Flask = create_sandbox_app(**options)
        self.sandbox: Sandbox = self.app.extensions[EXTENSION]
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SandboxServer:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            return self
        handler = WSGIRequestHandler if self.log_requests else QuietRequestHandler
        self._server = make_server(
            self.host, self.requested_port, self.app, threaded=True, request_handler=handler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sandbox-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop accepting requests, then stop the callback threads (running attempts finish)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            if self._thread is not None:
                self._thread.join(timeout)
            server.server_close()
        self.sandbox.close(timeout)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise RuntimeError("the sandbox server is not running")
        return self._server.server_port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (what CATAPULT_API_URL should be)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def user_id(self) -> str:
        """The account's user id."""
        return self.sandbox.options.user_id

    @property
    def token(self) -> str:
        """The API token (Basic user name)."""
        return self.sandbox.options.token

    @property
    def secret(self) -> str:
        """The API secret (Basic password)."""
        return self.sandbox.options.secret

    @property
    def auth(self) -> tuple[str, str]:
        """``(token, secret)`` for ``requests``."""
        return self.token, self.secret

    @property
    def messages_url(self) -> str:
        """``{url}/v1/users/{userId}/messages``."""
        return f"{self.url}/v1/users/{self.user_id}/messages"

    @property
    def store(self) -> MessageStore:
        """The in-memory message store."""
        return self.sandbox.store

    @property
    def callback_log(self) -> CallbackLog:
        """Every callback attempt."""
        return self.sandbox.log

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every scheduled event has been attempted; TimeoutError otherwise."""
        if not self.sandbox.wait_idle(timeout):
            raise TimeoutError(f"sandbox not idle after {timeout} s: {self.sandbox.status()}")

    def reset(self) -> None:
        """Forget everything (same as ``POST /sandbox/reset``)."""
        self.sandbox.reset()


def wait_until_up(url: str, timeout: float = 10.0) -> None:
    """Poll ``{url}/sandbox/idle`` until the sandbox answers (for out-of-process starts)."""
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        session.trust_env = False
        while True:
            try:
                session.get(f"{url}/sandbox/idle", timeout=1).close()
                return
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
