"""The callback receiver: the hot path. Verify, read, store (or journal), answer 200.

Catapult tries ``callbackUrl`` once and ``fallbackUrl`` once, then drops the event
(catapult-v1.md §3), so this path does one short transaction (or one journal append) and
nothing else: no network calls, no work that can happen later. It answers 200 only once the
event is durable: committed (``ingest``: correlated and applied by ``receive``) or journaled.
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import time

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import ClientDisconnected

from .errors import CATEGORY_BY_STATUS, ApiError, read_body
from .events import Received
from .ingest import EXTENSION, IngestUnavailable
from .metrics import CALLBACK_SECONDS, CALLBACKS
from .security import auth_failed, authorization, basic_failure

bp = Blueprint("callbacks", __name__, url_prefix="/callbacks")

_UNAUTHORIZED = json.dumps(
    {
        "category": "authentication",
        "code": "unauthorized",
        "message": "Callback credentials are missing or wrong.",
        "details": [],
    }
)


@functools.cache
def _basic_header(username: str, password: str) -> bytes:
    """The ``Authorization`` header a client sends for these credentials."""
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


def _authorized() -> bool:
    """Basic credentials (embedded by us in the callback URLs), compared in constant time.

    The header the carrier sends for our own credentials is compared as a whole first (no
    parsing); anything else is parsed and compared field by field."""
    cfg = current_app.config
    header = request.environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
    expected = _basic_header(cfg["CALLBACK_USERNAME"], cfg["CALLBACK_PASSWORD"])
    if hmac.compare_digest(header, expected):
        return True
    auth = authorization()
    if auth is None or auth.type != "basic":
        return False
    user_ok = hmac.compare_digest((auth.username or "").encode(), cfg["CALLBACK_USERNAME"].encode())
    password_ok = hmac.compare_digest(
        (auth.password or "").encode(), cfg["CALLBACK_PASSWORD"].encode()
    )
    return user_ok and password_ok


def _error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    body = {"category": CATEGORY_BY_STATUS[status], "code": code, "message": message}
    return Response(
        json.dumps({**body, "details": []}), status, headers, mimetype="application/json"
    )


def _too_large(via: str, limit: int, arrived: float) -> Response:
    _counted(via, request.method, "too-large", arrived)
    return _error(
        413,
        "request-too-large",
        f"Callback requests are limited to {limit} bytes.",
        {"Connection": "close"},  # so that the server does not read the rest of the body
    )


@functools.cache
def _metrics(via: str, method: str, outcome: str):
    """The counter and the latency histogram of one label set (looked up once: this is the
    hot path)."""
    return CALLBACKS.labels(via, method, outcome), CALLBACK_SECONDS.labels(via)


def _counted(via: str, method: str, outcome: str, arrived: float) -> None:
    """Count the answer, time it, and tell the request line (``requestlog``) what it was."""
    counter, seconds = _metrics(via, method, outcome)
    counter.inc()
    seconds.observe(time.monotonic() - arrived)
    request.environ["relay.outcome"] = outcome


def _receive(via: str) -> Response:
    """Verify → read (bounded) → store or journal → 200; see ``ingest`` for the storing."""
    arrived = time.monotonic()
    req = request._get_current_object()  # type: ignore[attr-defined]  (one proxy lookup)
    environ, method = req.environ, req.method
    environ["relay.via"] = via
    if method == "HEAD":  # Flask adds it to GET routes; the carrier never sends it
        return _error(
            405, "method-not-allowed", "Callbacks are GET or POST.", {"Allow": "GET, POST"}
        )
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    limit = app.config["CALLBACK_MAX_BODY_BYTES"]
    # Before the credentials and before reading anything: a body this large is not a
    # Catapult event (a few KB), and reading it would cost the memory it claims.
    if (req.content_length or 0) > limit or len(environ.get("QUERY_STRING", "")) > limit:
        return _too_large(via, limit, arrived)
    if not _authorized():
        _counted(via, method, "unauthorized", arrived)
        auth_failed("callbacks", basic_failure(environ.get("HTTP_AUTHORIZATION", "")))
        return Response(
            _UNAUTHORIZED,
            401,
            {"WWW-Authenticate": 'Basic realm="callbacks"'},
            mimetype="application/json",
        )
    # GET callbacks carry the event as query parameters, POST ones as JSON (catapult-v1.md §3).
    if method == "GET":
        raw = req.query_string.decode("utf-8", "replace")
    else:
        try:
            raw = read_body(limit).decode("utf-8", "replace")
        except ApiError:  # chunked, and over the limit once read that far
            return _too_large(via, limit, arrived)
        except ClientDisconnected:  # nobody is waiting for the answer, and nothing is kept
            _counted(via, method, "disconnected", arrived)
            raise
    received = Received(
        via, method, raw, environ.get("CONTENT_TYPE"), environ.get("HTTP_USER_AGENT")
    )
    try:
        outcome = app.extensions[EXTENSION].accept(received, arrived)
    except IngestUnavailable as exc:
        # Not stored anywhere: say so, so that the carrier's fallback try can go elsewhere.
        app.logger.error("callback not stored: %s", exc)
        _counted(via, method, "unavailable", arrived)
        return _error(503, "unavailable", "The callback could not be stored.", {"Retry-After": "1"})
    _counted(via, method, outcome, arrived)
    return Response(status=200)


@bp.route("/catapult", methods=["GET", "POST"])
def primary():
    """Receive a Catapult event on the primary callback URL."""
    return _receive("primary")


@bp.route("/catapult/fallback", methods=["GET", "POST"])
def fallback():
    """Receive a Catapult event on the fallback URL (the carrier's second and last try)."""
    return _receive("fallback")
