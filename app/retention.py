"""Retention: delete old callback events and old final messages, in small batches.

What goes: messages in a final status (``FINAL_STATUSES``) whose last change, and every event,
is older than the cutoff, together with those events and their webhook deliveries; events
that never matched a message (parked, unknown ids, unparseable) received before the cutoff;
webhook deliveries that finished (succeeded, or failed for good) before the cutoff; and
``Idempotency-Key`` answers first given before the cutoff (a repeat of such a key is a new
request). A
message short of a final status stays, with all its events, however old, and so does a
message with a delivery still pending (it is still being told).

How: a read that takes no lock walks the messages in id order (ids sort by creation, so the
old ones come first) and picks candidates; then each batch is one short write transaction
that checks them again, records them in the rollups and deletes them. On SQLite the batch
queues for the write lock like a callback does; its size (at most ``batch_size`` messages, with
their events) adapts so that it holds the lock about LOCK_TARGET_S, whatever the disk and the
rows cost. On PostgreSQL the rows are locked with SKIP LOCKED, so a callback that holds one is
never waited on (the row is left for the next run).

Stats stay right (``rollups.py``): a batch only takes rows that the rollups have already
counted (created in a covered bucket, last changed before the last pass's horizon), and writes
what it deletes as ``pruned-*`` rollup rows in the same transaction, which every later
recompute of the bucket adds back.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from . import rollups
from .db_setup import lock_for_write
from .lease import db_now
from .models import FINAL_STATUSES, CallbackEvent, IdempotencyKey, Message, RollupState
from .webhooks.models import WebhookDelivery

BATCH_SIZE = 500  # the most messages (or unmatched events) one batch looks at
FIRST_BATCH = 10  # where the adaptive size starts (it grows while batches are quick)
# The smallest batch: part of a batch's time (the commit's fsync) does not shrink with it, so
# below this a busy machine would only make the run slower, not the lock shorter.
MIN_BATCH = 5
# How long one batch may hold the write lock: a callback that arrives meanwhile waits this long
# at most (SQLite), far inside the 50 ms p99 the callbacks are held to (DESIGN.md).
LOCK_TARGET_S = 0.010
UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h`` or ``90m`` as a timedelta; ValueError for anything else."""
    found = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", text or "")
    if not found or int(found[1]) == 0:
        raise ValueError(f"expected a positive age like 30d, 12h or 90m, got {text!r}")
    return timedelta(**{UNITS[found[2]]: int(found[1])})


def database_time(engine: Engine) -> datetime:
    """Now on the database server's clock (the cutoff must not depend on this host's)."""
    with Session(engine) as session:
        return session.scalar(select(db_now(engine.dialect.name)))


class Pruner:
    """One prune run; ``step`` does one batch, until ``done``."""

    def __init__(
        self,
        engine: Engine,
        older_than: timedelta,
        batch_size: int = BATCH_SIZE,
        dry_run: bool = False,
    ) -> None:
        self.engine = engine
        self.older_than = older_than
        self.batch_size = batch_size
        self.size = min(FIRST_BATCH, batch_size)  # the current, adaptive batch size
        self._locked_at = 0.0
        self.dry_run = dry_run
        self.postgres = engine.dialect.name != "sqlite"
        self.cutoff: datetime | None = None
        self.last_id: str | None = None
        # then "events" (the unmatched ones), "deliveries", and "keys" (idempotency keys)
        self.phase = "messages"
        self.after: str | int | None = None  # the last id the read walked past
        self.pending: list = []  # ids read that look prunable, not yet tried
        self.deleted: Counter = Counter()
        self.scanned = 0
        self.batches = 0
        self.done = False

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{verb} {self.deleted['messages']:,} messages, {self.deleted['events']:,} "
            f"events, {self.deleted['deliveries']:,} webhook deliveries and "
            f"{self.deleted['keys']:,} idempotency keys older than "
            f"{self.cutoff:%Y-%m-%d %H:%M:%S} UTC "
            f"({self.batches} batches, {self.scanned:,} rows looked at)"
        )

    def step(self) -> int:
        """One batch; returns the rows it deleted (0 also when it only walked past rows)."""
        if self.done:
            return 0
        if self.cutoff is None:
            self._start()
        if not self.pending:
            # A read window of ``batch_size`` rows (no lock), then deletes in adaptive chunks.
            read = {
                "messages": self._read_messages,
                "events": self._read_events,
                "deliveries": self._read_deliveries,
                "keys": self._read_keys,
            }[self.phase]
            self.pending = read()
            if not self.pending:
                return 0
        chunk, self.pending = self.pending[: self.size], self.pending[self.size :]
        if self.phase == "messages":
            return self._delete_messages(chunk)
        if self.phase == "events":
            return self._delete_events(chunk)
        if self.phase == "deliveries":
            return self._delete_deliveries(chunk)
        return self._delete_keys(chunk)

    def _start(self) -> None:
        self.cutoff = database_time(self.engine) - self.older_than
        with Session(self.engine) as session:
            # Ids sort by creation (``ids.py``), so the walk ends at the newest id created
            # before the cutoff instead of reading the young rows too. Taken from the data, not
            # from the cutoff: an id is minted on its host's clock.
            self.last_id = session.scalar(
                select(func.max(Message.id)).where(Message.created_at < self.cutoff)
            )
        if self.last_id is None:
            self.phase = "events"

    # ------------------------------------------------------------------ messages

    def _read_messages(self) -> list[str]:
        """The next window of messages in id order: the ids of those that look prunable."""
        with Session(self.engine) as session:  # a plain read: no write lock
            stmt = select(Message.id, Message.status, Message.updated_at).where(
                Message.id <= self.last_id
            )
            if self.after is not None:
                stmt = stmt.where(Message.id > self.after)
            rows = session.execute(stmt.order_by(Message.id).limit(self.batch_size)).all()
        if not rows:
            self.phase, self.after = "events", None
            return []
        self.after = rows[-1].id
        self.scanned += len(rows)
        return [r.id for r in rows if r.status in FINAL_STATUSES and r.updated_at < self.cutoff]

    def _delete_messages(self, ids: list[str]) -> int:
        with Session(self.engine) as session:
            horizon = self._horizon(session)
            if horizon is None:
                return 0
            recent = exists().where(
                CallbackEvent.message_id == Message.id, CallbackEvent.received_at >= horizon
            )
            telling = exists().where(
                WebhookDelivery.message_id == Message.id, WebhookDelivery.status == "pending"
            )
            stmt = select(
                Message.id, Message.created_at, Message.status, Message.receipt_seconds
            ).where(
                Message.id.in_(ids),
                Message.status.in_(FINAL_STATUSES),
                Message.updated_at < horizon,
                Message.created_at < horizon,
                ~recent,
                ~telling,
            )
            if self.postgres and not self.dry_run:
                stmt = stmt.with_for_update(skip_locked=True, of=Message)
            doomed = session.execute(stmt).all()
            if not doomed:
                return 0
            doomed_ids = [m.id for m in doomed]
            events = session.execute(
                select(
                    CallbackEvent.received_at,
                    CallbackEvent.via,
                    CallbackEvent.duplicate,
                    CallbackEvent.late,
                    CallbackEvent.unparseable,
                ).where(CallbackEvent.message_id.in_(doomed_ids))
            ).all()
            pruned = rollups.Pruned()
            for m in doomed:
                pruned.message(m.created_at, m.status, m.receipt_seconds)
            for e in events:
                pruned.event(e.received_at, e.via, e._asdict(), matched=True)
            deliveries = session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.message_id.in_(doomed_ids))
            )
            self._commit(
                session,
                pruned,
                delete(CallbackEvent).where(CallbackEvent.message_id.in_(doomed_ids)),
                delete(WebhookDelivery).where(WebhookDelivery.message_id.in_(doomed_ids)),
                delete(Message).where(Message.id.in_(doomed_ids)),
            )
        self.deleted.update(messages=len(doomed), events=len(events), deliveries=deliveries)
        return len(doomed) + len(events) + deliveries

    # ------------------------------------------------------------------ unmatched events

    def _read_events(self) -> list[int]:
        """The next window of unmatched events in id order: the ids of the old ones."""
        with Session(self.engine) as session:
            stmt = select(CallbackEvent.id, CallbackEvent.received_at).where(
                CallbackEvent.message_id.is_(None)
            )
            if self.after is not None:
                stmt = stmt.where(CallbackEvent.id > self.after)
            rows = session.execute(stmt.order_by(CallbackEvent.id).limit(self.batch_size)).all()
        if not rows:
            self.phase, self.after = "deliveries", None
            return []
        self.after = rows[-1].id
        self.scanned += len(rows)
        return [r.id for r in rows if r.received_at < self.cutoff]

    def _delete_events(self, ids: list[int]) -> int:
        with Session(self.engine) as session:
            horizon = self._horizon(session)
            if horizon is None:
                return 0
            stmt = select(
                CallbackEvent.id,
                CallbackEvent.received_at,
                CallbackEvent.via,
                CallbackEvent.duplicate,
                CallbackEvent.late,
                CallbackEvent.unparseable,
            ).where(
                CallbackEvent.id.in_(ids),
                CallbackEvent.message_id.is_(None),  # attached meanwhile: it stays
                CallbackEvent.received_at < horizon,
            )
            if self.postgres and not self.dry_run:
                stmt = stmt.with_for_update(skip_locked=True)
            doomed = session.execute(stmt).all()
            if not doomed:
                return 0
            pruned = rollups.Pruned()
            for e in doomed:
                pruned.event(e.received_at, e.via, e._asdict(), matched=False)
            gone = [e.id for e in doomed]
            self._commit(session, pruned, delete(CallbackEvent).where(CallbackEvent.id.in_(gone)))
        self.deleted.update(events=len(doomed))
        return len(doomed)

    # ------------------------------------------------------------------ webhook deliveries

    def _read_deliveries(self) -> list[int]:
        """The next window of deliveries in id order: the ids of those finished long ago."""
        with Session(self.engine) as session:
            stmt = select(WebhookDelivery.id, WebhookDelivery.finished_at)
            if self.after is not None:
                stmt = stmt.where(WebhookDelivery.id > self.after)
            rows = session.execute(stmt.order_by(WebhookDelivery.id).limit(self.batch_size)).all()
        if not rows:
            self.phase, self.after = "keys", None
            return []
        self.after = rows[-1].id
        self.scanned += len(rows)
        return [r.id for r in rows if r.finished_at is not None and r.finished_at < self.cutoff]

    def _delete_deliveries(self, ids: list[int]) -> int:
        return self._delete_plain(
            "deliveries",
            WebhookDelivery.id,
            WebhookDelivery.id.in_(ids),
            WebhookDelivery.status != "pending",  # replayed meanwhile: it stays
            WebhookDelivery.finished_at < self.cutoff,
        )

    # ------------------------------------------------------------------ idempotency keys

    def _read_keys(self) -> list[str]:
        """The next window of idempotency keys in key order: those first answered long ago."""
        with Session(self.engine) as session:
            stmt = select(IdempotencyKey.key, IdempotencyKey.created_at)
            if self.after is not None:
                stmt = stmt.where(IdempotencyKey.key > self.after)
            rows = session.execute(stmt.order_by(IdempotencyKey.key).limit(self.batch_size)).all()
        if not rows:
            self.done = True
            return []
        self.after = rows[-1].key
        self.scanned += len(rows)
        return [r.key for r in rows if r.created_at < self.cutoff]

    def _delete_keys(self, keys: list[str]) -> int:
        return self._delete_plain(
            "keys",
            IdempotencyKey.key,
            IdempotencyKey.key.in_(keys),
            IdempotencyKey.created_at < self.cutoff,
        )

    # ------------------------------------------------------------------ shared

    def _horizon(self, session: Session) -> datetime | None:
        """Start the batch's write transaction; the time before which rows may go: the cutoff,
        but never past what the rollups have counted (None: no rollups yet, nothing goes)."""
        if not self.dry_run:
            rollups.lock(session)
        self._locked_at = time.monotonic()
        state = session.get(RollupState, "main")
        if state is None:
            return None
        return min(self.cutoff, state.covered_until, state.seen - rollups.MARGIN)

    def _delete_plain(self, kind: str, key, *conditions) -> int:
        """One batch of rows no rollup counts: those of ``key`` that still meet ``conditions``."""
        with Session(self.engine) as session:
            if not self.dry_run:
                lock_for_write(session)
            self._locked_at = time.monotonic()
            stmt = select(key).where(*conditions)
            if self.postgres and not self.dry_run:
                stmt = stmt.with_for_update(skip_locked=True)
            gone = list(session.scalars(stmt))
            if not gone:
                return 0
            statement = delete(key.class_).where(key.in_(gone))
            self._commit(session, rollups.Pruned(), statement)
        self.deleted.update({kind: len(gone)})
        return len(gone)

    def _commit(self, session: Session, pruned: rollups.Pruned, *statements) -> None:
        """Record the batch in the rollups and delete it, in the one transaction."""
        self.batches += 1
        if self.dry_run:
            session.rollback()
            self._adapt(time.monotonic() - self._locked_at)
            return
        rollups.add_pruned(session, pruned)
        for statement in statements:
            session.execute(statement.execution_options(synchronize_session=False))
        session.commit()
        self._adapt(time.monotonic() - self._locked_at)
        if not self.postgres:
            # SQLite: the commit that takes the write-ahead log past its threshold copies it
            # into the database file, and after a prune batch that would often be a
            # callback's. A passive checkpoint here does it first, holding no write lock.
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _adapt(self, held: float) -> None:
        """Size the next batch so that it holds the write lock about LOCK_TARGET_S."""
        if held > LOCK_TARGET_S:
            self.size = max(min(MIN_BATCH, self.batch_size), int(self.size * LOCK_TARGET_S / held))
        elif held < LOCK_TARGET_S / 2:
            self.size = min(self.batch_size, int(self.size * 1.25) + 1)
