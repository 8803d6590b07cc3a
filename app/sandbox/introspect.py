"""``/sandbox/*``: what the sandbox decided and did, for tests and the demo (no auth, loopback)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from . import errors
from .core import Sandbox

bp = Blueprint("sandbox_introspection", __name__, url_prefix="/sandbox")


def sandbox() -> Sandbox:
    """The app's Sandbox."""
    return current_app.extensions["catapult_sandbox"]


@bp.get("/messages")
def messages() -> Response:
    """Every message with its final-truth fields and plan, oldest first (``?direction=`` filter)."""
    records = sandbox().store.records(request.args.get("direction"))
    return jsonify({"count": len(records), "messages": records})


@bp.get("/messages/<message_id>")
def message(message_id: str) -> Response:
    """One message's record."""
    record = sandbox().store.read(message_id, lambda m: m.record())
    if record is None:
        raise errors.message_not_found(message_id)
    return jsonify(record)


@bp.get("/callbacks")
def callbacks() -> Response:
    """Every callback attempt in the order they finished (``?messageId=`` filter)."""
    entries = sandbox().log.entries(request.args.get("messageId"))
    return jsonify({"count": len(entries), "callbacks": entries})


@bp.get("/idle")
def idle() -> Response:
    """``idle`` is true when every scheduled event has been generated and attempted."""
    return jsonify(sandbox().status())


@bp.post("/reset")
def reset() -> Response:
    """Forget everything and restart the seeded decisions."""
    cancelled = sandbox().reset()
    return jsonify({"reset": True, "cancelledEvents": cancelled})


@bp.get("/config")
def config() -> Response:
    """The scenario, seed, limits and knobs in force."""
    return jsonify(sandbox().options.describe())
