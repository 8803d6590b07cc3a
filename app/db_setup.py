"""Per-connection database settings, and the SQLite writers' queue."""

from __future__ import annotations

import fcntl
import os

from sqlalchemy import event
from sqlalchemy.engine import Engine

WRITE_LOCK = "relay_write_lock_fd"  # keys in the pool record's info dict
LOCKED = "relay_write_locked"


def configure_engine(engine: Engine) -> None:
    """SQLite: WAL so readers never block the writer, a busy timeout instead of instant
    ``database is locked`` errors, foreign keys on, and ``synchronous=FULL`` so that a committed
    callback survives power loss (a 200 to the carrier promises the event is stored)."""
    if engine.dialect.name != "sqlite":
        return
    database = engine.url.database
    lock_path = f"{database}.writelock" if database and database != ":memory:" else None

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        if lock_path:
            # One open file per connection: flock() excludes across processes *and* threads.
            record.info[WRITE_LOCK] = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)

    @event.listens_for(engine, "checkin")
    def _release_on_checkin(_dbapi_conn, record):
        release_write_lock(record)

    @event.listens_for(engine, "close")
    def _close_lock_file(_dbapi_conn, record):
        fd = record.info.pop(WRITE_LOCK, None)
        if fd is not None:
            os.close(fd)  # closing the file also drops any lock it held


def acquire_write_lock(info: dict) -> None:
    """Queue behind other writers in the kernel before ``BEGIN IMMEDIATE``.

    SQLite's own busy handler polls with sleeps of 1 ms, 2 ms, 5 ms ... 100 ms, so under a
    stream of callbacks a waiting writer can sleep far longer than the lock is held. A blocking
    ``flock`` wakes the next writer the moment the previous one commits. It is taken only when
    the connection holds no SQLite lock, so it cannot deadlock with SQLite's lock."""
    fd = info.get(WRITE_LOCK)
    if fd is not None and not info.get(LOCKED):
        fcntl.flock(fd, fcntl.LOCK_EX)
        info[LOCKED] = True


def release_write_lock(record) -> None:
    """Let the next writer in (after commit or rollback, when the connection goes back)."""
    if record.info.pop(LOCKED, False):
        fcntl.flock(record.info[WRITE_LOCK], fcntl.LOCK_UN)
