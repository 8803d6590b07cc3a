"""The callback receiver: the hot path. Verify, store raw, correlate, apply, commit, answer 200.

Catapult tries ``callbackUrl`` once and ``fallbackUrl`` once, then drops the event
(catapult-v1.md §3), so this path does one short transaction and nothing else: no network
calls, no work that can happen later. It answers 200 only after the commit.
"""

from __future__ import annotations

import hmac
import json

from flask import Blueprint, Response, current_app, request

from . import receive
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


def _authorized() -> bool:
    """Basic credentials (embedded by us in the callback URLs), compared in constant time."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    cfg = current_app.config
    user_ok = hmac.compare_digest(
        (auth.username or "").encode(), cfg["CALLBACK_USERNAME"].encode()
    )
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
    payload = receive.parse_raw(request.method, raw)
    # A plain Core connection, not the ORM session: one short transaction, nothing else.
    with db.engine.connect() as conn:
        stored = receive.store_event(
            conn,
            via=via,
            method=request.method,
            raw=raw,
            payload=payload,
            content_type=request.content_type,
            user_agent=request.user_agent.string[:200] or None,
        )
        conn.commit()  # the 200 below promises the event is stored
    CALLBACKS.labels(via, request.method, stored.outcome).inc()
    return Response(status=200)


@bp.route("/catapult", methods=["GET", "POST"])
def primary():
    """Receive a Catapult event on the primary callback URL."""
    return _receive("primary")


@bp.route("/catapult/fallback", methods=["GET", "POST"])
def fallback():
    """Receive a Catapult event on the fallback URL (the carrier's second and last try)."""
    return _receive("fallback")
