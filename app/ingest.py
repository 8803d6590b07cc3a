"""Every callback stored before its 200: in the database within its budget, else the journal.

Catapult tries ``callbackUrl`` once and ``fallbackUrl`` once, then drops the event
(catapult-v1.md §3): an answer that is late or not 200 is a receipt lost for good. So a
callback waits for the database at most ``CALLBACK_DB_BUDGET_MS`` (counted from its arrival);
when the database refuses the connection, drops it, or has not committed in time, the event
goes to the journal (``app.journal``: local disk, fsync'd) and is answered 200 all the same.
While anything waits in the journal, new callbacks of the host go there too, so that the
replay applies them in arrival order.

Live callbacks of one process are committed together by one writer thread
(``batching.GroupWriter``): one transaction and one flush per batch rather than per callback.
Journal replay applies its entries with the same function (``apply_events``), so correlation,
the state machine and the flags are those of a live callback.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask
from sqlalchemy import ARRAY, String, any_, bindparam, or_, select
from sqlalchemy.engine import Engine

from .batching import GroupWriter, Pending
from .db_setup import ConnectionLost, HeldConnection, write_transaction
from .events import Received, event_columns, parse_raw
from .ids import is_carrier_id
from .journal import Journal, JournalError, Replayer
from .metrics import JOURNAL_WRITTEN
from .models import CallbackEvent, Message
from .rawsql import RawTx
from .receive import CARRIER_ID_LOCK, StoredEvent, carrier_id_lock_key, store_event
from .webhooks import outbox

log = logging.getLogger(__name__)

M = Message.__table__
E = CallbackEvent.__table__
EXTENSION = "relay_ingest"
# How long a callback may wait for the journal's fsync before it is answered 503 (the disk
# is failing: the carrier's fallback try may find a healthier instance).
JOURNAL_WAIT_S = 5.0

_KEY_STORED = select(E.c.id).where(E.c.request_key == bindparam("key"))
# PostgreSQL: the messages a batch will update, locked in id order first, then the carrier ids
# it may look up (``receive.lock_carrier_id``), so that two batches (or a batch and the
# dispatcher's record step, which locks in id order too) touching the same messages in
# different orders wait for each other instead of deadlocking.
_LOCK_IN_ORDER = (
    select(M.c.id)
    .where(
        or_(
            M.c.id == any_(bindparam("ids", type_=ARRAY(String))),
            M.c.carrier_message_id == any_(bindparam("carrier_ids", type_=ARRAY(String))),
        )
    )
    .order_by(M.c.id)
    .with_for_update()
)


class DatabaseUnavailable(Exception):
    """The database refused, dropped or timed out the callback's transaction."""


class IngestUnavailable(Exception):
    """Neither the database nor the journal can take this callback now."""


def is_unavailable(exc: BaseException, engine: Engine) -> bool:
    """A failure of the database server or the connection to it (not of one event's data):
    refused or dropped connections, timeouts, SQLite's lock wait running out. A deadlock or
    serialization failure is about the data: those are retried event by event."""
    if isinstance(exc, (ConnectionLost, DatabaseUnavailable)):
        return True
    dbapi = engine.dialect.loaded_dbapi
    if not isinstance(exc, (dbapi.OperationalError, dbapi.InterfaceError)):
        return False
    if engine.dialect.name == "postgresql":
        from psycopg import errors

        return not isinstance(exc, errors.TransactionRollback)
    return True


# ---------------------------------------------------------------------- applying


def apply_events(
    engine: Engine,
    events: list[Received],
    *,
    dedupe: bool = False,
    readable: bool = True,
    held: HeldConnection | None = None,
) -> list[StoredEvent | None]:
    """Store and apply ``events`` in one write transaction, in order; committed on return.

    ``dedupe``: skip requests already stored (their result is None): a journaled event may
    also have been committed by a transaction that outlived its budget. ``readable=False``
    stores the raw requests only, flagged unparseable (the last resort for a request whose
    fields the database refuses). A pooled connection the server dropped while idle (a
    restart, a failover) fails on its first statement: then, once, the transaction runs again
    on a fresh connection rather than giving up. ``held``: on that thread's kept connection
    rather than one from the pool."""
    payloads = [parse_raw(e.method, e.raw) if readable else False for e in events]
    for attempt in (1, 2):
        tx = None
        try:
            with held.transaction() if held else write_transaction(engine) as dbapi:
                tx = RawTx(dbapi, engine.dialect)
                # The batch's webhook subscriptions: one read, before any row lock.
                outbox.prepare(tx)
                if len(events) > 1 and engine.dialect.name == "postgresql":
                    _lock_in_order(tx, payloads)
                results: list[StoredEvent | None] = []
                for event, payload in zip(events, payloads, strict=True):
                    if dedupe and tx.first(_KEY_STORED, {"key": event.key}) is not None:
                        results.append(None)
                        continue
                    results.append(store_event(tx, payload=payload, **event.fields()))
                return results
        except ConnectionLost:
            if attempt == 2 or tx is None or tx.statements:
                raise
    raise AssertionError("unreachable")


def _lock_in_order(tx: RawTx, payloads: list[Any]) -> None:
    ids, carrier_ids, untagged = set(), set(), set()
    for payload in payloads:
        columns = event_columns(payload)
        tag, carrier_id = columns.get("tag"), columns.get("carrier_message_id")
        if tag and not is_carrier_id(tag):
            ids.add(tag)
        elif carrier_id:
            untagged.add(carrier_id)  # may be parked or be an inbound message: its id lock too
        if carrier_id:
            carrier_ids.add(carrier_id)
    if ids or carrier_ids:
        tx.all(_LOCK_IN_ORDER, {"ids": sorted(ids), "carrier_ids": sorted(carrier_ids)})
    for key in sorted({carrier_id_lock_key(c) for c in untagged}):
        tx.first(CARRIER_ID_LOCK, {"key": key})


def apply_resilient(
    engine: Engine,
    events: list[Received],
    *,
    dedupe: bool = False,
    held: HeldConnection | None = None,
) -> list[StoredEvent | None | Exception]:
    """``apply_events``, and when the batch fails for a reason other than the database being
    unavailable (one event's data, a deadlock), each event on its own; an event whose fields
    the database refuses is stored raw and flagged. The result of an event that could not be
    stored at all is its exception. Raises ``DatabaseUnavailable``."""
    try:
        return list(apply_events(engine, events, dedupe=dedupe, held=held))
    except Exception as exc:
        if is_unavailable(exc, engine):
            raise DatabaseUnavailable(str(exc)) from exc
        if len(events) == 1 and dedupe is False:
            log.info("callback %s: %s; applying it again, de-duplicated", events[0].key, exc)
        elif len(events) > 1:
            log.warning("a batch of %d callbacks failed (%s): one by one", len(events), exc)
    results: list[StoredEvent | None | Exception] = []
    for event in events:
        for readable in (True, False):
            try:
                stored = apply_events(engine, [event], dedupe=True, readable=readable, held=held)
                results.append(stored[0])
                break
            except Exception as exc:
                if is_unavailable(exc, engine):
                    raise DatabaseUnavailable(str(exc)) from exc
                if not readable:
                    log.error("callback %s cannot be stored: %s", event.key, exc)
                    results.append(exc)
                else:
                    log.warning("callback %s stored raw only: %s", event.key, exc)
    return results


# ---------------------------------------------------------------------- the process's intake


class Ingest:
    """One per app and process: the database writer, the journal and its replayer."""

    def __init__(self, engine: Engine, journal: Journal, budget_s: float) -> None:
        self.engine = engine
        self.journal = journal
        self.budget_s = budget_s
        self.db_writer = GroupWriter("relay-callbacks", self._commit_db)
        self.held = HeldConnection(engine)  # the writer thread's own connection
        self.journal_writer = GroupWriter("relay-journal", self._commit_journal)
        self.prober = GroupWriter("relay-db-probe", self._probe)
        self.replayer = Replayer(
            journal,
            lambda events: apply_resilient(engine, events, dedupe=True),
            DatabaseUnavailable,
        )

    def accept(self, received: Received, arrived: float) -> str:
        """Store ``received`` (which arrived at ``time.monotonic()`` ``arrived``) durably and
        return its outcome; raises ``IngestUnavailable`` when nothing could take it."""
        if not self.journal.active():
            pending = self.db_writer.submit(received)
            if pending.wait(max(0.0, arrived + self.budget_s - time.monotonic())):
                if pending.error is None:
                    return pending.result.outcome
                cause = f"database error: {pending.error}"
            else:
                pending.abandon()
                cause = f"no commit within {self.budget_s * 1000:.0f} ms"
            log.warning("callback %s goes to the journal (%s)", received.key, cause)
        return self._journal(received)

    def _journal(self, received: Received) -> str:
        pending = self.journal_writer.submit(received)
        if not pending.wait(JOURNAL_WAIT_S) or pending.error is not None:
            pending.abandon()
            raise IngestUnavailable(f"the journal did not take the callback: {pending.error}")
        JOURNAL_WRITTEN.inc()
        self.replayer.start()  # this process replays unless another one of the host does
        return "journaled"

    def _commit_db(self, batch: list[Pending]) -> None:
        try:
            results = apply_resilient(self.engine, [p.item for p in batch], held=self.held)
        except DatabaseUnavailable as exc:
            for pending in batch:
                pending.reject(exc)
            return
        for pending, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                pending.reject(result)
            else:
                pending.resolve(result or _ALREADY_STORED)

    def _commit_journal(self, batch: list[Pending]) -> None:
        try:
            self.journal.append([p.item for p in batch])
        except JournalError as exc:
            log.error("%s", exc)
            for pending in batch:
                pending.reject(exc)
            return
        for pending in batch:
            pending.resolve("journaled")

    def _probe(self, batch: list[Pending]) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        for pending in batch:
            pending.resolve(True)

    def database_answers(self, timeout: float = 1.0) -> tuple[bool, str | None]:
        """Whether the database answers a ``SELECT 1`` within ``timeout`` seconds (on a
        thread of its own, so a server that hangs cannot hold the caller), and why not."""
        pending = self.prober.submit(None)
        if not pending.wait(timeout):
            pending.abandon()
            return False, f"no answer within {timeout:g} s"
        if pending.error is not None:
            return False, type(pending.error).__name__
        if self.journal.active():
            self.replayer.wake()  # the balancer's health checks shorten the replay's back-off
        return True, None

    def start(self) -> None:
        """Begin replaying the host's journal (a serving process calls this at start, so the
        entries of a process that died are replayed even before traffic arrives)."""
        self.replayer.start()

    def close(self, timeout: float = 10.0) -> None:
        """Finish the callbacks in hand, stop the threads (graceful shutdown)."""
        self.db_writer.stop(timeout)
        self.held.close()
        self.journal_writer.stop(timeout)
        self.prober.stop(timeout)
        self.replayer.stop(timeout)


class _AlreadyStored:
    """The result for a request that was stored before (its key is in the database)."""

    outcome = "duplicate-request"


_ALREADY_STORED = _AlreadyStored()


def init_ingest(app: Flask, engine: Engine) -> Ingest:
    """The app's ``Ingest`` (threads start when first needed, in the process that needs them)."""
    journal = Journal(app.config["JOURNAL_DIR"])
    ingest = Ingest(engine, journal, app.config["CALLBACK_DB_BUDGET_MS"] / 1000)
    app.extensions[EXTENSION] = ingest
    return ingest
