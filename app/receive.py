"""Correlate a callback event with its message and apply it: the receive side's domain.

Behind ``/callbacks/catapult`` (and journal replay, and reconciliation) every event goes
through ``store_event`` inside the caller's one write transaction:

    SELECT the message + "seen this event before?" in one query (correlate: ``tag`` → relay
    id, else ``messageId`` → carrier id) → INSERT the raw event → UPDATE the message (only
    when the event moves it, by the state machine ``decide``)

The statements are Core constructs run through ``rawsql`` (compiled once per dialect). The
state machine is a pure function shared with parked-event attachment and reconciliation, so
every path applies events the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, bindparam, exists, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .db_setup import lock_for_write
from .events import event_columns, event_status, integer, parse_media, parse_raw, storable, text
from .ids import is_carrier_id, new_id
from .models import STATUS_RANK, CallbackEvent, Message, utcnow
from .rawsql import RawTx
from .webhooks.outbox import RESOURCE_COLUMNS, emit, subscriptions

M = Message.__table__
E = CallbackEvent.__table__
_CONTENT_TYPE_LIMIT = E.c.content_type.type.length
_USER_AGENT_LIMIT = E.c.user_agent.type.length
_NUMBER_LIMIT = M.c.from_number.type.length
_FROM_RAW = object()  # store_event's default payload: the fields parsed from the raw request


# ---------------------------------------------------------------- the state machine


@dataclass
class Decision:
    """What one event does to its message."""

    status: str | None = None  # the status after the event, when applied
    applied: bool = False
    duplicate: bool = False
    late: bool = False
    unparseable: bool = False
    code_mismatch: bool = False


def decide(current: str, event: dict[str, Any], duplicate: bool) -> Decision:
    """Duplicates are kept but not re-applied; a late or regressing event never moves a
    message backwards; final statuses never change; ``deliveryState`` decides delivered vs
    not-delivered, and a ``deliveryCode`` that disagrees is kept and flagged."""
    if duplicate:
        return Decision(duplicate=True)
    status = event_status(event.get("state"), event.get("delivery_state"))
    if status is None:
        return Decision(unparseable=True)  # an outbound state we do not know: kept for review
    decision = Decision()
    code = event.get("delivery_code")
    if event.get("delivery_state") in ("delivered", "not-delivered") and code is not None:
        decision.code_mismatch = (event["delivery_state"] == "delivered") != (code == 0)
    rank_now, rank_new = STATUS_RANK[current], STATUS_RANK[status]
    if rank_now == 5 or rank_new < rank_now:
        decision.late = True  # flagged on the timeline, never applied
        return decision
    decision.status = status
    decision.applied = True
    return decision


def message_changes(row, event: dict, payload: dict, decision: Decision, now) -> dict:
    """Column updates for a message that ``decision`` applies to (``row`` is its current
    status/state/accepted_at/final_at)."""
    changes: dict[str, Any] = {"status": decision.status, "updated_at": now}
    if event.get("state"):
        changes["state"] = event["state"]
    if event.get("delivery_state"):
        changes["delivery_state"] = event["delivery_state"]
    code = event.get("delivery_code")
    if decision.status in ("delivered", "not-delivered", "error") or code is not None:
        changes["delivery_code"] = code
        changes["delivery_description"] = text(payload.get("deliveryDescription"))
    segments = integer(payload.get("segmentCount"))
    if segments is not None:
        changes["segment_count"] = segments
    if decision.code_mismatch:
        changes["code_mismatch"] = True
    if STATUS_RANK[decision.status] == 5 and row.final_at is None:
        final_at = event.get("received_at") or now
        changes["final_at"] = final_at
        if row.accepted_at is not None:
            # From carrier acceptance to the final receipt; never negative (an early receipt
            # can be recorded before the send's own response).
            changes["receipt_seconds"] = max(0.0, (final_at - row.accepted_at).total_seconds())
    return changes


# ---------------------------------------------------------------- statements


def _duplicate_of_event():
    return exists().where(
        E.c.message_id == M.c.id,
        E.c.duplicate.is_(False),
        E.c.state.is_not_distinct_from(bindparam("d_state")),
        E.c.delivery_state.is_not_distinct_from(bindparam("d_delivery_state")),
        E.c.delivery_code.is_not_distinct_from(bindparam("d_delivery_code")),
    )


_COLUMNS = (
    M.c.id,
    M.c.status,
    M.c.carrier_message_id,
    M.c.direction,
    M.c.accepted_at,
    M.c.final_at,
)


def _lookup(columns, key):
    """One query finds the message by ``key`` and tells whether an identical event was
    stored before; the row is locked (PostgreSQL) until the transaction ends."""
    return (
        select(*columns, _duplicate_of_event().label("dup"))
        .where(key == bindparam("key"))
        .with_for_update()
    )


_BY_ID = _lookup(_COLUMNS, M.c.id)
_BY_CARRIER_ID = _lookup(_COLUMNS, M.c.carrier_message_id)
# While some endpoint subscribes to notifications, the same lookups read every column of the
# message resource too: the notification's body tells the message as of the change, and the
# row is being read anyway (no statement more than without subscribers).
_WIDE = tuple(M.c[name] for name in RESOURCE_COLUMNS)
_BY_ID_WIDE = _lookup(_WIDE, M.c.id)
_BY_CARRIER_ID_WIDE = _lookup(_WIDE, M.c.carrier_message_id)


# Built once, values always passed as parameters: each compiles once per dialect (``Prepared``).
_INSERT_EVENT = insert(E)
_INSERT_EVENT_RETURNING = insert(E).returning(E.c.id)
_INSERT_MESSAGE = insert(M)
_UPDATE_MESSAGE = update(M).where(M.c.id == bindparam("_id"))
_UPDATE_EVENT = update(E).where(E.c.id == bindparam("_id"))
_ID_BY_CARRIER_ID = select(M.c.id).where(M.c.carrier_message_id == bindparam("key"))


def _find(tx: RawTx, event: dict, wide: bool = False):
    """``tag`` → relay id first (works before the carrier id is recorded), then carrier id;
    ``wide``: with every column of the message resource."""
    by_id, by_carrier_id = (_BY_ID_WIDE, _BY_CARRIER_ID_WIDE) if wide else (_BY_ID, _BY_CARRIER_ID)
    params = {
        "d_state": event.get("state"),
        "d_delivery_state": event.get("delivery_state"),
        "d_delivery_code": event.get("delivery_code"),
    }
    tag = event.get("tag")
    if tag and not is_carrier_id(tag):
        row = tx.first(by_id, {"key": tag, **params})
        if row is not None and row.direction == "out":
            return row
    carrier_id = event.get("carrier_message_id")
    if not carrier_id:
        return None
    row = tx.first(by_carrier_id, {"key": carrier_id, **params})
    if row is None and tx.dialect.name == "postgresql":
        # About to be parked: look once more, under the carrier id's lock, in case a send
        # response is recording this id right now (``lock_carrier_id``).
        lock_carrier_id(tx, carrier_id)
        row = tx.first(by_carrier_id, {"key": carrier_id, **params})
    return row


CARRIER_ID_LOCK = select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)))


def lock_carrier_id(tx: RawTx, carrier_id: str) -> None:
    """PostgreSQL: one transaction at a time looks a carrier id up and parks (or stores an
    inbound message) under it, or writes it onto a message and looks for what was parked
    under it. Without this, an event looking for an id that a concurrent send response is
    recording could be parked just after that response looked for parked events (and wait
    for the sweep). SQLite runs one writer at a time anyway.

    Lock order, on every path: message rows first, then carrier ids (a batch takes its
    rows and then its ids in sorted order up front, ``ingest``); and an id is locked before
    it is written onto a message, so that nobody holding the id lock waits for that row."""
    if tx.dialect.name == "postgresql":
        tx.first(CARRIER_ID_LOCK, {"key": carrier_id_lock_key(carrier_id)})


def carrier_id_lock_key(carrier_id: str) -> int:
    """The advisory-lock key of a carrier id (a signed 64-bit hash)."""
    digest = hashlib.blake2b(carrier_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") - (1 << 63)


_LOCK_MESSAGE = select(M.c.id).where(M.c.id == bindparam("key")).with_for_update()


def lock_message(tx: RawTx, message_id: str) -> None:
    """PostgreSQL: the message's row, locked until the transaction ends (before any carrier
    id lock, see ``lock_carrier_id``)."""
    if tx.dialect.name == "postgresql":
        tx.first(_LOCK_MESSAGE, {"key": message_id})


def _insert_event(tx: RawTx, row: dict) -> int:
    if tx.dialect.name == "sqlite":
        return tx.run(_INSERT_EVENT, row).lastrowid
    return tx.first(_INSERT_EVENT_RETURNING, row, keys=tuple(row)).id


@dataclass
class StoredEvent:
    """What ``store_event`` did, for the caller's answer and metrics."""

    id: int
    message_id: str | None
    decision: Decision
    parked: bool = False

    @property
    def outcome(self) -> str:
        d = self.decision
        return (
            "unparseable"
            if d.unparseable
            else "parked"
            if self.parked
            else "duplicate"
            if d.duplicate
            else "late"
            if d.late
            else "applied"
        )


def store_event(
    target: Session | Connection | RawTx,
    *,
    via: str,
    method: str,
    raw: str,
    payload: Any = _FROM_RAW,
    content_type: str | None = None,
    user_agent: str | None = None,
    now: datetime | None = None,
    received_at: datetime | None = None,
    request_key: str | None = None,
) -> StoredEvent:
    """Insert the raw event and apply it. The event is stored whatever happens next.

    ``target`` is a session or connection (its transaction is started as a writer here) or a
    ``RawTx`` the caller already began (the callback path); the caller commits. ``payload``
    defaults to the fields parsed from ``raw`` (anything but an object stores the request as
    unparseable). ``received_at`` is when the request arrived
    (a journaled event is applied later: ``now`` is then the time of applying it);
    ``request_key`` is the unique key of the request that carried it, so that applying the
    same request twice fails instead of storing it twice."""
    now = now or utcnow()
    tx = RawTx.of(target)
    # Read once per transaction (the batch's first event); kept on ``tx`` for ``emit``.
    tx.webhooks = subscriptions(target, tx)
    notify = bool(tx.webhooks)
    if payload is _FROM_RAW:
        payload = parse_raw(method, raw)
    event = event_columns(payload)
    row = {
        "received_at": received_at or now,
        "via": via,
        "method": method,
        "raw": storable(raw),
        "content_type": text(content_type, _CONTENT_TYPE_LIMIT),
        "user_agent": text(user_agent, _USER_AGENT_LIMIT),
        "request_key": request_key,
        "carrier_message_id": None,
        "tag": None,
        "event_type": None,
        "direction": None,
        "state": None,
        "delivery_state": None,
        "delivery_code": None,
        "message_id": None,
        "applied": False,
        "status_after": None,
        "duplicate": False,
        "late": False,
        "parked": False,
        "attached_at": None,
        "unparseable": False,
        "code_mismatch": False,
    }
    row.update(event)
    decision = Decision(unparseable=bool(event.get("unparseable")))
    if not decision.unparseable:
        if event["direction"] == "in" or event["state"] == "received":
            decision = _store_inbound(tx, row, payload, now)
        else:
            message = _find(tx, event, wide=notify)
            if message is None:
                # Raced the send's response (or not ours yet): parked until its carrier id
                # is known (``attach_parked``), then applied in arrival order.
                row["parked"] = True
            else:
                decision = _apply(tx, message, row, payload, now)
    _flags(row, decision)
    event_id = _insert_event(tx, row)
    return StoredEvent(event_id, row["message_id"], decision, parked=row["parked"])


def _flags(row: dict, decision: Decision) -> None:
    row.update(
        applied=decision.applied,
        status_after=decision.status,
        duplicate=decision.duplicate,
        late=decision.late,
        unparseable=decision.unparseable,
        code_mismatch=decision.code_mismatch,
    )


def _apply(tx: RawTx, message, row: dict, payload: dict, now) -> Decision:
    """Decide and write the message's side; ``row`` (the event) is written by the caller."""
    row["message_id"] = message.id
    decision = decide(message.status, row, bool(message.dup))
    changes = message_changes(message, row, payload, decision, now) if decision.applied else {}
    if message.carrier_message_id is None and row.get("carrier_message_id"):
        # A tagged event beat the send's response: its messageId is the carrier id.
        lock_carrier_id(tx, row["carrier_message_id"])
        taken = tx.first(_ID_BY_CARRIER_ID, {"key": row["carrier_message_id"]})
        if taken is None:
            changes["carrier_message_id"] = row["carrier_message_id"]
    if changes:
        changes.setdefault("updated_at", now)
        tx.run(_UPDATE_MESSAGE, {"_id": message.id, **changes})
    if decision.applied and decision.status != message.status:
        # In the same transaction as the UPDATE (the outbox); nothing when nobody subscribes.
        emit(tx, decision.status, {**message, **changes}, now, tx)
    return decision


def _store_inbound(tx: RawTx, row: dict, payload: dict, now) -> Decision:
    """An inbound message (direction ``in``): stored once, as ``status: received``."""
    carrier_id = row.get("carrier_message_id")
    if carrier_id:
        lock_carrier_id(tx, carrier_id)  # primary and fallback may bring it at the same time
        known = tx.first(_ID_BY_CARRIER_ID, {"key": carrier_id})
        if known is not None:
            row["message_id"] = known.id
            return Decision(duplicate=True)
    message_id = new_id()
    values = dict(
        id=message_id,
        direction="in",
        status="received",
        state="received",
        from_number=text(payload.get("from"), _NUMBER_LIMIT) or "",
        to_number=text(payload.get("to"), _NUMBER_LIMIT) or "",
        text=storable(body) if isinstance(body := payload.get("text"), str) else None,
        media=parse_media(payload.get("media")),
        carrier_message_id=carrier_id,
        segment_count=integer(payload.get("segmentCount")),
        callback_http_method=row["method"],
        created_at=row["received_at"],
        updated_at=now,
        accepted_at=row["received_at"],
        final_at=row["received_at"],
        attempts=0,
        code_mismatch=False,
    )
    tx.run(_INSERT_MESSAGE, values)
    row["message_id"] = message_id
    emit(tx, "received", _INBOUND_DEFAULTS | values, now, tx)
    return Decision(status="received", applied=True)


# The resource columns an inbound message is inserted without.
_INBOUND_DEFAULTS = dict.fromkeys(
    ("tag", "receipt_requested", "delivery_state", "delivery_code", "delivery_description", "error")
)


# ---------------------------------------------------------------- parked events


def attach_parked(session: Session, message_id: str, carrier_id: str | None, now=None) -> int:
    """Apply, in arrival order, the events parked waiting for ``carrier_id``."""
    if not carrier_id:
        return 0
    conn = session.connection()
    tx = RawTx.of(session)
    tx.webhooks = subscriptions(session, tx)  # before the row locks (``webhooks.outbox``)
    lock_message(tx, message_id)
    lock_carrier_id(tx, carrier_id)
    parked = conn.execute(
        select(
            E.c.id,
            E.c.state,
            E.c.delivery_state,
            E.c.delivery_code,
            E.c.method,
            E.c.raw,
            E.c.received_at,
            E.c.carrier_message_id,
        )
        .where(E.c.carrier_message_id == carrier_id, E.c.message_id.is_(None), E.c.parked.is_(True))
        .order_by(E.c.id)
    ).all()
    now = now or utcnow()
    for event in parked:
        params = {
            "d_state": event.state,
            "d_delivery_state": event.delivery_state,
            "d_delivery_code": event.delivery_code,
        }
        by_id = _BY_ID_WIDE if tx.webhooks else _BY_ID
        message = tx.first(by_id, {"key": message_id, **params})
        row = dict(event._mapping)
        decision = _apply(tx, message, row, parse_raw(event.method, event.raw) or {}, now)
        flags = {"message_id": message_id, "attached_at": now}
        _flags(flags, decision)
        tx.run(_UPDATE_EVENT, {"_id": event.id, **flags})
    return len(parked)


def attach_parked_sweep(session: Session, limit: int = 500) -> int:
    """Attach parked events whose carrier id became known in a concurrent transaction."""
    conn = lock_for_write(session)
    pairs = conn.execute(
        select(M.c.id, M.c.carrier_message_id)
        .join(E, E.c.carrier_message_id == M.c.carrier_message_id)
        .where(E.c.message_id.is_(None), E.c.parked.is_(True))
        .distinct()
        .limit(limit)
    ).all()
    if pairs:
        subscriptions(session)  # before any message row lock (``webhooks.outbox``)
    return sum(attach_parked(session, message_id, carrier_id) for message_id, carrier_id in pairs)
