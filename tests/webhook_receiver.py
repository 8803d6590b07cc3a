"""A webhook receiver for the tests: real HTTP on 127.0.0.1 (a port the OS picks), verifying
every request with its own reading of the Standard Webhooks spec (not the relay's library),
failing the attempts it is told to, and recording what arrived in order."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300  # the spec's suggested window for webhook-timestamp


def expected_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> bytes:
    """HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed with the base64-decoded secret that
    follows ``whsec_`` (Standard Webhooks, "Signature scheme")."""
    assert secret.startswith("whsec_"), secret
    key = base64.b64decode(secret[len("whsec_") :])
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def verify(secret: str, headers, body: bytes, now: float | None = None) -> str | None:
    """None when the request is authentic and fresh, else what is wrong with it."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return "missing header"
    if not timestamp.isdigit() or abs((now or time.time()) - int(timestamp)) > TOLERANCE_S:
        return f"bad timestamp {timestamp!r}"
    expected = expected_signature(secret, msg_id, timestamp, body)
    for item in signatures.split(" "):  # space-delimited, each "v1,<base64>"
        version, _, value = item.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return None
    return "no matching signature"


@dataclass
class Arrival:
    """One request the receiver answered (or let time out)."""

    msg_id: str
    path: str
    body: dict
    answer: object  # a status code, or "timeout"
    problem: str | None  # the verification failure, None when authentic

    @property
    def type(self) -> str:
        return self.body["type"]

    @property
    def message_id(self) -> str:
        return self.body["data"]["id"]


class Receiver:
    """``decide(msg_id, nth, body)`` says how to answer the ``nth`` (1-based) request carrying
    that ``webhook-id``: a status code, or ``"timeout"`` (no answer until the client gives up).
    ``down()``/``up()`` close and reopen the listening socket (connection refused between)."""

    def __init__(self, decide=None, hang_s: float = 5.0) -> None:
        self.decide = decide or (lambda msg_id, nth, body: 200)
        self.hang_s = hang_s
        self.secret: str | None = None
        self.arrivals: list[Arrival] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/relay"

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._handle(self, body)

            def log_message(self, *_args):
                pass

        return Handler

    def _handle(self, handler, body: bytes) -> None:
        problem = verify(self.secret, handler.headers, body) if self.secret else "no secret"
        msg_id = handler.headers.get("webhook-id", "")
        with self.lock:
            nth = 1 + sum(1 for a in self.arrivals if a.msg_id == msg_id)
            document = json.loads(body)
            answer = self.decide(msg_id, nth, document)
            self.arrivals.append(Arrival(msg_id, handler.path, document, answer, problem))
        if answer == "timeout":
            self.stopping.wait(self.hang_s)  # bounded: the test's stop() ends it at once
            return
        handler.send_response(answer)
        if 300 <= answer < 400:  # a redirect to itself: a client that follows it comes back
            handler.send_header("Location", self.url + "/moved")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def up(self) -> None:
        """Listen (again, on the same port once it has one)."""
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler(), False)
        server.daemon_threads = True
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        self.port = server.server_address[1]
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def down(self) -> None:
        """Stop listening: connections are refused until ``up()``."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = None

    def stop(self) -> None:
        self.stopping.set()
        self.down()

    def accepted(self) -> list[Arrival]:
        """The arrivals answered 2xx, in arrival order."""
        with self.lock:
            return [a for a in self.arrivals if isinstance(a.answer, int) and a.answer < 300]

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def refused_port() -> int:
    """A loopback port nothing listens on (bound then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
