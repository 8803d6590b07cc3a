"""Liveness and readiness for the load balancer."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from .extensions import db

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive (no database access: a slow database must not restart workers)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """The database answers: the balancer may send traffic here."""
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"
        db.session.rollback()
        return jsonify(status="unavailable", error=type(exc).__name__), 503
    finally:
        db.session.remove()
    return jsonify(status="ok")
