"""Per-connection database settings, and the SQLite writers' queue."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

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


def connection_of(target: Session | Connection) -> Connection:
    """The Core connection of a session (or the connection itself)."""
    return target if isinstance(target, Connection) else target.connection()


def lock_for_write(target: Session | Connection) -> Connection:
    """Start the transaction as a writer. SQLite: ``BEGIN IMMEDIATE`` takes the database write
    lock up front (a deferred transaction that reads and then writes can fail with
    SQLITE_BUSY_SNAPSHOT under WAL). PostgreSQL locks the message row with ``FOR UPDATE``
    instead (SQLite's compiler leaves that clause out)."""
    conn = connection_of(target)
    if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        acquire_write_lock(conn.connection.info)
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    return conn


def release_write_lock(record) -> None:
    """Let the next writer in (after commit or rollback, when the connection goes back)."""
    if record.info.pop(LOCKED, False):
        fcntl.flock(record.info[WRITE_LOCK], fcntl.LOCK_UN)


@contextmanager
def write_transaction(engine: Engine) -> Iterator:
    """A pooled DBAPI connection inside one write transaction, committed when the block ends
    and rolled back if it raises (the callback endpoint's one short transaction).

    SQLite: queue in the kernel, then ``BEGIN IMMEDIATE``; PostgreSQL: the driver opens the
    transaction with the first statement. The connection goes back to the pool either way,
    which releases the writers' queue; when the server dropped it, the pool is renewed."""
    fairy = engine.raw_connection()
    dbapi = fairy.dbapi_connection
    try:
        if engine.dialect.name == "sqlite":
            acquire_write_lock(fairy.info)
            dbapi.execute("BEGIN IMMEDIATE")
        yield dbapi
        dbapi.commit()
    except engine.dialect.loaded_dbapi.Error as exc:
        if not engine.dialect.is_disconnect(exc, dbapi, None):
            raise
        # The server is gone or was replaced: the other pooled connections are as stale as
        # this one (SQLAlchemy's own reaction too), so start over with a fresh pool.
        fairy.invalidate(exc)
        engine.dispose()
        raise ConnectionLost(str(exc)) from exc
    finally:
        fairy.close()  # the pool rolls back anything uncommitted


class HeldConnection:
    """One pooled DBAPI connection kept by the thread that writes most (a worker's callback
    writer), so that each of its transactions skips the pool's checkout and checkin (and their
    event hooks), a measurable share of a small batch's cost. One thread only."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.fairy = None
        self.pid: int | None = None

    @contextmanager
    def transaction(self) -> Iterator:
        """Like ``write_transaction``, on the kept connection (taken from the pool when there is
        none yet, or after the server dropped the last one)."""
        engine = self.engine
        if self.fairy is None or self.pid != os.getpid():
            self.fairy, self.pid = engine.raw_connection(), os.getpid()
        fairy = self.fairy
        dbapi = fairy.dbapi_connection
        try:
            if engine.dialect.name == "sqlite":
                acquire_write_lock(fairy.info)
                dbapi.execute("BEGIN IMMEDIATE")
            yield dbapi
            dbapi.commit()
        except BaseException as exc:
            lost = isinstance(
                exc, engine.dialect.loaded_dbapi.Error
            ) and engine.dialect.is_disconnect(exc, dbapi, None)
            if lost:
                fairy.invalidate(exc)
                self.fairy = None
                engine.dispose()  # the other pooled connections are as stale as this one
                raise ConnectionLost(str(exc)) from exc
            try:
                dbapi.rollback()
            except engine.dialect.loaded_dbapi.Error:  # broken some other way: start afresh
                fairy.invalidate()
                self.fairy = None
            raise
        finally:
            release_write_lock(fairy)

    def close(self) -> None:
        """Give the connection back to the pool."""
        if self.fairy is not None and self.pid == os.getpid():
            self.fairy.close()
        self.fairy = None


class ConnectionLost(Exception):
    """The database connection broke inside ``write_transaction`` (a server restart, a
    failover); nothing of that transaction was committed unless it broke in the commit."""
