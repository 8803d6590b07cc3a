"""The database floor: the bare endpoint plus the least that a 200 meaning "stored" costs in a
database.

The same route and parsing as ``bare_app``, then the raw event is inserted into its own SQLite
database with the relay's settings (WAL, ``synchronous=FULL``, writers queued on ``flock``) and
committed before the 200: one fsync'd commit per callback and nothing else (no auth, no
correlation, no state machine). With ``DURABLE_FLOOR_URL`` (a PostgreSQL URL) the same INSERT
and COMMIT go to PostgreSQL instead, over one psycopg connection per worker. Measured in the
same run as the other two, bare → durable is what durability alone costs on this machine, and
durable → relay is the relay's own work.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3

from flask import Flask, Response, request

from .bare_app import parse_event

app = Flask(__name__)
DATABASE = os.environ.get("DURABLE_FLOOR_DATABASE", "durable-floor.sqlite3")
POSTGRESQL_URL = os.environ.get("DURABLE_FLOOR_URL", "").replace(
    "postgresql+psycopg://", "postgresql://"
)
_local: dict = {}


def _store_postgresql(method: str, raw: str) -> None:
    if _local.get("pid") != os.getpid():
        import psycopg

        con = psycopg.connect(POSTGRESQL_URL)
        con.execute(
            "CREATE TABLE IF NOT EXISTS durable_floor_events (id BIGSERIAL PRIMARY KEY, "
            "method TEXT, raw TEXT)"
        )
        con.commit()
        _local.update(pid=os.getpid(), con=con)
    con = _local["con"]
    con.execute("INSERT INTO durable_floor_events (method, raw) VALUES (%s, %s)", (method, raw))
    con.commit()


def _connection() -> tuple[sqlite3.Connection, int]:
    """One connection and one lock file per worker process, opened after the fork."""
    if _local.get("pid") != os.getpid():
        con = sqlite3.connect(DATABASE, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000"):
            con.execute(f"PRAGMA {pragma}")
        con.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, method TEXT, raw TEXT)"
        )
        lock = os.open(f"{DATABASE}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
        _local.update(pid=os.getpid(), con=con, lock=lock)
    return _local["con"], _local["lock"]


@app.route("/callbacks/catapult", methods=["GET", "POST"])
def catapult() -> Response:
    """Parse the event like the relay does, store it raw, commit, then answer 200."""
    raw = parse_event()
    if POSTGRESQL_URL:
        _store_postgresql(request.method, raw)
        return Response(status=200)
    con, lock = _connection()
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO events (method, raw) VALUES (?, ?)", (request.method, raw))
        con.execute("COMMIT")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
    return Response(status=200)
