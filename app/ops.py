"""Liveness and readiness for the load balancer."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .ingest import EXTENSION

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive (no database access: a slow database must not restart workers)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Callbacks can be stored here: in the database, or else in the journal (``degraded``).

    It answers 503 only when neither can take a callback. A database outage reaches every
    instance at once, and a balancer that took them all out of rotation would turn a
    recoverable outage into lost receipts: while the journal takes them, stay in."""
    ingest = current_app.extensions[EXTENSION]
    database, reason = ingest.database_answers()
    journal = ingest.journal
    writable = journal.writable()
    try:
        depth, oldest = journal.depth()
    except Exception:  # an unreadable journal is not writable either
        depth, oldest, writable = None, None, False
    ready = database or writable
    body = {
        "status": "ok" if database and not depth else "degraded" if ready else "unavailable",
        # Any fault counts: the database down, callbacks waiting, or no journal to fall back on.
        "degraded": not database or bool(depth) or not writable,
        "database": "ok" if database else "unavailable",
        "journal": {
            "writable": writable,
            "depth": depth,
            "oldestAgeSeconds": None if oldest is None else round(oldest, 3),
        },
    }
    if reason:
        body["databaseError"] = reason
    return jsonify(body), 200 if ready else 503
