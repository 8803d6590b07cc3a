"""The dispatcher lease: one active sender across processes and hosts, on the database's clock.

Every time the lease compares or stores is the database server's own clock, read inside the
statement that acts on it (PostgreSQL ``clock_timestamp()``, SQLite's ``'now'``), never a
host's: two hosts whose clocks disagree (no NTP) still agree on whether the lease has expired,
so a host an hour ahead cannot steal a live lease and a host an hour behind cannot keep one it
lost. Takeover is one conditional UPDATE, so only one standby can win it.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import DateTime, Interval, String, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, type_coerce

from .models import Lease, UTCDateTime

LEASE_NAME = "dispatcher"
# A holder renews every iteration (at most a second apart); a standby polls every LEASE_POLL,
# so it takes over at most LEASE_TTL + LEASE_POLL (6 s) after the holder died.
LEASE_TTL = 5.0
LEASE_POLL = 1.0


def db_now(dialect: str, offset: float = 0.0) -> ColumnElement[datetime]:
    """The database server's current time plus ``offset`` seconds, as a SQL expression in the
    form ``UTCDateTime`` stores on that backend (so it compares with stored columns)."""
    if dialect == "sqlite":
        # Stored as naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' and compared as text; 'now' has
        # millisecond precision, so %f's three decimals get three zeros to match.
        expr = func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{offset:+.6f} seconds", type_=String)
        return type_coerce(expr + "000", UTCDateTime())
    # clock_timestamp(), not now(): now() is the transaction's start, stale after a lock wait.
    expr = func.clock_timestamp(type_=DateTime(timezone=True))
    if offset:
        expr = expr + literal(timedelta(seconds=offset), Interval())
    return type_coerce(expr, UTCDateTime())


def default_holder() -> str:
    """A holder id unique to this dispatcher instance (host, pid, random)."""
    return f"{socket.gethostname()[:50]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DbLease:
    """One holder's view of a named lease row; every call works inside the caller's session."""

    def __init__(self, holder: str, dialect: str, ttl: float = LEASE_TTL, name: str = LEASE_NAME):
        self.holder = holder
        self.dialect = dialect
        self.ttl = ttl
        self.name = name

    def now(self, offset: float = 0.0) -> ColumnElement[datetime]:
        return db_now(self.dialect, offset)

    def peek(self, session: Session) -> tuple[datetime, str | None]:
        """The database's time and the live holder (None when the lease is free or expired),
        in one read that takes no write lock (what a standby does every poll)."""
        live = (
            select(Lease.holder)
            .where(Lease.name == self.name, Lease.expires_at >= self.now())
            .scalar_subquery()
        )
        now, holder = session.execute(select(self.now(), live)).one()
        return now, holder

    def hold(self, session: Session) -> str | None:
        """Renew the lease, or take it when it is free or expired: ``"renewed"`` (it was ours
        and live), ``"acquired"`` (newly ours), or None (someone else holds it). The caller has
        taken the write lock; on None after a lost insert race the session was rolled back."""
        mine = (Lease.name == self.name, Lease.holder == self.holder)
        renewed = session.execute(
            update(Lease)
            .where(*mine, Lease.expires_at >= self.now())
            .values(expires_at=self.now(self.ttl))
            .execution_options(synchronize_session=False)
        ).rowcount
        if renewed:
            return "renewed"
        # Atomic takeover: only one UPDATE can match an expired (or our own lapsed) lease.
        taken = session.execute(
            update(Lease)
            .where(Lease.name == self.name, or_(mine[1], Lease.expires_at < self.now()))
            .values(holder=self.holder, expires_at=self.now(self.ttl), acquired_at=self.now())
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken:
            return "acquired"
        if session.scalar(select(Lease.name).where(Lease.name == self.name)) is not None:
            return None
        try:
            session.execute(
                insert(Lease).values(
                    name=self.name,
                    holder=self.holder,
                    expires_at=self.now(self.ttl),
                    acquired_at=self.now(),
                )
            )
        except IntegrityError:
            # Another process inserted the row first (PostgreSQL; SQLite serializes writers
            # with BEGIN IMMEDIATE): it holds the lease.
            session.rollback()
            return None
        return "acquired"

    def release(self, session: Session) -> None:
        """Let go (clean stop): expired as of now on the database's clock, if still ours."""
        session.execute(
            update(Lease)
            .where(Lease.name == self.name, Lease.holder == self.holder)
            .values(expires_at=self.now(-1.0))
            .execution_options(synchronize_session=False)
        )
