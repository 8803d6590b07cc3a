"""The callback receiver: the hot path. Verify, store raw, correlate, apply, commit, answer 200.

Catapult tries ``callbackUrl`` once and ``fallbackUrl`` once, then drops the event
(catapult-v1.md §3), so this path does one short transaction and nothing else: no network
calls, no work that can happen later. It answers 200 only after the commit.
"""

from __future__ import annotations

import base64
import functools
import hmac
import json

from flask import Blueprint, Response, current_app, request

from . import receive
from .db_setup import ConnectionLost, write_transaction
from .extensions import db
from .metrics import CALLBACKS

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
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    user_ok = hmac.compare_digest((auth.username or "").encode(), cfg["CALLBACK_USERNAME"].encode())
    password_ok = hmac.compare_digest(
        (auth.password or "").encode(), cfg["CALLBACK_PASSWORD"].encode()
    )
    return user_ok and password_ok


def _receive(via: str) -> Response:
    if not _authorized():
        CALLBACKS.labels(via, request.method, "unauthorized").inc()
        return Response(
            _UNAUTHORIZED,
            401,
            {"WWW-Authenticate": 'Basic realm="callbacks"'},
            mimetype="application/json",
        )
    # GET callbacks carry the event as query parameters, POST ones as JSON (catapult-v1.md §3).
    if request.method == "GET":
        raw = request.query_string.decode("utf-8", "replace")
    else:
        raw = request.get_data(as_text=True)
    stored = _store(
        via=via,
        method=request.method,
        raw=raw,
        payload=receive.parse_raw(request.method, raw),
        content_type=request.content_type,
        user_agent=(request.headers.get("User-Agent") or "")[:200] or None,
    )
    CALLBACKS.labels(via, request.method, stored.outcome).inc()
    return Response(status=200)


def _store(**event) -> receive.StoredEvent:
    """One short transaction on a pooled DBAPI connection (not the ORM session), committed
    before the caller's 200, which promises the event is stored.

    A pooled connection that the database server dropped while it sat idle (a restart, a
    failover) fails on its first statement, before the server did anything for this
    transaction: then, once, the transaction runs again on a fresh connection rather than
    spending one of the carrier's two tries on a 500."""
    engine = db.engine
    for attempt in (1, 2):
        tx = None
        try:
            with write_transaction(engine) as dbapi:
                tx = receive.RawTx(dbapi, engine.dialect)
                return receive.store_event(tx, **event)
        except ConnectionLost:
            if attempt == 2 or tx is None or tx.statements:
                raise
    raise AssertionError("unreachable")


@bp.route("/catapult", methods=["GET", "POST"])
def primary():
    """Receive a Catapult event on the primary callback URL."""
    return _receive("primary")


@bp.route("/catapult/fallback", methods=["GET", "POST"])
def fallback():
    """Receive a Catapult event on the fallback URL (the carrier's second and last try)."""
    return _receive("fallback")
