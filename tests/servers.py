"""Real HTTP servers for end-to-end tests: a WSGI app on 127.0.0.1, on a port the OS picks."""

from __future__ import annotations

import http.client
import socket
import threading
from contextlib import contextmanager

from werkzeug.serving import WSGIRequestHandler, make_server


class QuietHandler(WSGIRequestHandler):
    """No access-log line per request (errors are still logged)."""

    def log_request(self, code="-", size="-"):
        pass


class LateApp:
    """A WSGI app whose target is set after the server is bound (the relay's own URL is part
    of its configuration, and the port is only known once the socket exists)."""

    def __init__(self) -> None:
        self.target = None

    def __call__(self, environ, start_response):
        return self.target(environ, start_response)


class ServedApp:
    """Serve a WSGI app over real HTTP in a background thread until ``stop()``."""

    def __init__(self) -> None:
        self.late = LateApp()
        self.server = make_server(
            "127.0.0.1", 0, self.late, threaded=True, request_handler=QuietHandler
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self, app) -> ServedApp:
        self.late.target = app
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@contextmanager
def served_relay(config: dict):
    """The relay built from ``config``, its tables created, served on 127.0.0.1 (port from
    the OS) until the block ends; yields ``(app, port)``."""
    from app import create_app
    from app.extensions import db
    from tests.conftest import close_app

    server = ServedApp()
    app = create_app(config)
    with app.app_context():
        db.create_all()
    server.start(app)
    try:
        yield app, server.server.server_port
    finally:
        server.stop()
        close_app(app)


def raw_request(
    port: int,
    method: str,
    target: bytes,
    headers: list[tuple[str, bytes]] = (),
    body: bytes = b"",
    chunked: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte on a fresh connection (no client library to tidy up
    its header values or URL); returns (status, headers, body) of the answer."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name.encode() + b": " + value for name, value in headers]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    lines.append(b"Connection: close")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + payload)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()
