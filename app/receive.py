"""The receive side: store every callback event and apply it to its message.

This is the hot path behind ``/callbacks/catapult``, so it works with a handful of SQL
statements inside the caller's one transaction:

    BEGIN IMMEDIATE (SQLite) → SELECT the message + "seen this event before?" in one query
    → INSERT the raw event → UPDATE the message (only when the event moves it) → COMMIT

The statements are SQLAlchemy Core constructs, compiled once per dialect and run on the DBAPI
cursor with the column types' own bind and result processors (``Prepared``): the same SQL and
type handling as ``Connection.execute``, without its per-execution machinery, which cost more
CPU than the database work itself (bench/results).

The state machine (``decide``) is a pure function shared with parked-event attachment and
reconciliation, so every path applies events the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import bindparam, exists, insert, select, update
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from .db_setup import acquire_write_lock
from .ids import is_carrier_id, new_id
from .models import STATUS_RANK, CallbackEvent, Message, utcnow

M = Message.__table__
E = CallbackEvent.__table__


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


# ---------------------------------------------------------------- prepared statements


class Prepared:
    """A Core statement compiled once for one dialect, executed on a DBAPI cursor.

    Parameters go through ``construct_params`` and each bind's ``bind_processor`` (UTC
    datetimes, booleans, JSON), selected columns through their ``result_processor``, exactly
    as SQLAlchemy would. Statements whose compiled form needs Python-side column defaults are
    refused: every value must be given."""

    __slots__ = ("sql", "_compiled", "_order", "_binds", "_results", "_fields")

    def __init__(self, statement: Executable, dialect: Dialect, keys: tuple[str, ...] | None):
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        if compiled.insert_prefetch or compiled.update_prefetch:
            missing = [c.key for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
            raise ValueError(f"Prepared statements take every value explicitly: {missing}")
        self.sql = compiled.string
        self._compiled = compiled
        self._order = compiled.positiontup  # None for named paramstyles (psycopg)
        self._binds = [
            (name, process)
            for name, bind in compiled.binds.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        if hasattr(statement, "selected_columns"):
            columns = [(c.key, c.type) for c in statement.selected_columns]
        else:  # INSERT/UPDATE ... RETURNING
            columns = [
                (d["name"], d["type"])
                for d in getattr(statement, "returning_column_descriptions", ())
            ]
        self._fields = tuple(name for name, _type in columns)
        self._results = [
            (i, process)
            for i, (_name, type_) in enumerate(columns)
            if (process := type_.dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]

    def execute(self, cursor, params: dict[str, Any]):
        values = self._compiled.construct_params(params)
        for name, process in self._binds:
            values[name] = process(values[name])
        cursor.execute(
            self.sql, values if self._order is None else [values[name] for name in self._order]
        )
        return cursor

    def first(self, cursor, params: dict[str, Any]) -> Record | None:
        row = self.execute(cursor, params).fetchone()
        if row is None:
            return None
        if self._results:
            row = list(row)
            for i, process in self._results:
                row[i] = process(row[i])
        return Record(zip(self._fields, row, strict=True))


class Record(dict):
    """A fetched row: columns by name as attributes."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


_PREPARED: dict[tuple, Prepared] = {}


class RawTx:
    """A DBAPI connection inside a write transaction, and its dialect's prepared statements.

    ``statements`` counts the statements that completed: while it is 0 the server has done
    nothing for this transaction."""

    __slots__ = ("cursor", "dialect", "statements", "_key")

    def __init__(self, dbapi_connection, dialect: Dialect):
        self.cursor = dbapi_connection.cursor()
        self.dialect = dialect
        self.statements = 0
        self._key = (dialect.name, dialect.driver, dialect.paramstyle)

    def prepared(self, statement: Executable, keys: tuple[str, ...] | None = None) -> Prepared:
        key = (statement, keys, *self._key)
        found = _PREPARED.get(key)
        if found is None:
            found = _PREPARED[key] = Prepared(statement, self.dialect, keys)
        return found

    def first(
        self, statement: Executable, params: dict[str, Any], keys: tuple[str, ...] | None = None
    ) -> Record | None:
        row = self.prepared(statement, keys).first(self.cursor, params)
        self.statements += 1
        return row

    def run(self, statement: Executable, params: dict[str, Any]):
        """Execute with exactly ``params``' keys as the statement's values (INSERT/UPDATE)."""
        cursor = self.prepared(statement, tuple(params)).execute(self.cursor, params)
        self.statements += 1
        return cursor

    @classmethod
    def of(cls, target: Session | Connection | RawTx) -> RawTx:
        """The raw transaction of a session or connection, started as a writer."""
        if isinstance(target, RawTx):
            return target
        conn = lock_for_write(target)
        return cls(conn.connection.dbapi_connection, conn.dialect)


# ---------------------------------------------------------------- parsing


def text(value: Any) -> str | None:
    """A non-empty stripped string, or None (objects and lists are not text)."""
    if value is None or isinstance(value, (dict, list)):
        return None
    value = str(value).strip()
    return value or None


def integer(value: Any) -> int | None:
    """``deliveryCode`` and ``segmentCount`` arrive as numbers or numeric strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def lower(value: Any) -> str | None:
    value = text(value)
    return value.lower() if value else None


def parse_media(value: Any) -> list[str] | None:
    """MMS media: a JSON list, one URL, or (GET callbacks) a bracketed ``[url1, url2]`` string."""
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    value = str(value).strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def event_status(state: str | None, delivery_state: str | None) -> str | None:
    """The relay status an outbound event reports; None when it reports nothing we know."""
    if state == "error":
        return "error"
    if delivery_state == "delivered":
        return "delivered"
    if delivery_state == "not-delivered":
        return "not-delivered"
    if state == "sent":
        return "sent"
    if state in ("queued", "sending"):
        return "accepted"
    return None


def parse_raw(method: str, raw: str | None) -> dict[str, Any] | None:
    """An event's fields from its raw form: GET callbacks carry them as query parameters
    (catapult-v1.md §3; the first value of a repeated name wins), POST ones as a JSON object."""
    if not raw:
        return None
    if method == "GET":
        return dict(reversed(parse_qsl(raw, keep_blank_values=True))) or None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def event_columns(payload: Any) -> dict[str, Any]:
    """The indexed columns of an event taken from its payload; ``unparseable`` when it is not
    an object or names neither a message id nor a tag."""
    if not isinstance(payload, dict):
        return {"unparseable": True}
    columns = {
        "carrier_message_id": text(payload.get("messageId")),
        "tag": text(payload.get("tag")),
        "event_type": text(payload.get("eventType")),
        "direction": lower(payload.get("direction")),
        "state": lower(payload.get("state")),
        "delivery_state": lower(payload.get("deliveryState")),
        "delivery_code": integer(payload.get("deliveryCode")),
    }
    columns["unparseable"] = columns["carrier_message_id"] is None and columns["tag"] is None
    return columns


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
# One query finds the message and tells whether an identical event was stored before.
_BY_ID = (
    select(*_COLUMNS, _duplicate_of_event().label("dup"))
    .where(M.c.id == bindparam("key"))
    .with_for_update()
)
_BY_CARRIER_ID = (
    select(*_COLUMNS, _duplicate_of_event().label("dup"))
    .where(M.c.carrier_message_id == bindparam("key"))
    .with_for_update()
)


# Built once, values always passed as parameters: each compiles once per dialect (``Prepared``).
_INSERT_EVENT = insert(E)
_INSERT_EVENT_RETURNING = insert(E).returning(E.c.id)
_INSERT_MESSAGE = insert(M)
_UPDATE_MESSAGE = update(M).where(M.c.id == bindparam("_id"))
_UPDATE_EVENT = update(E).where(E.c.id == bindparam("_id"))
_ID_BY_CARRIER_ID = select(M.c.id).where(M.c.carrier_message_id == bindparam("key"))


def _find(tx: RawTx, event: dict):
    """``tag`` → relay id first (works before the carrier id is recorded), then carrier id."""
    params = {
        "d_state": event.get("state"),
        "d_delivery_state": event.get("delivery_state"),
        "d_delivery_code": event.get("delivery_code"),
    }
    tag = event.get("tag")
    if tag and not is_carrier_id(tag):
        row = tx.first(_BY_ID, {"key": tag, **params})
        if row is not None and row.direction == "out":
            return row
    if event.get("carrier_message_id"):
        return tx.first(_BY_CARRIER_ID, {"key": event["carrier_message_id"], **params})
    return None


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
    payload: Any,
    content_type: str | None = None,
    user_agent: str | None = None,
    now: datetime | None = None,
) -> StoredEvent:
    """Insert the raw event and apply it. The event is stored whatever happens next.

    ``target`` is a session or connection (its transaction is started as a writer here) or a
    ``RawTx`` the caller already began (the callback endpoint); the caller commits."""
    now = now or utcnow()
    tx = RawTx.of(target)
    event = event_columns(payload)
    row = {
        "received_at": now,
        "via": via,
        "method": method,
        "raw": raw,
        "content_type": content_type,
        "user_agent": user_agent,
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
            message = _find(tx, event)
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
        taken = tx.first(_ID_BY_CARRIER_ID, {"key": row["carrier_message_id"]})
        if taken is None:
            changes["carrier_message_id"] = row["carrier_message_id"]
    if changes:
        changes.setdefault("updated_at", now)
        tx.run(_UPDATE_MESSAGE, {"_id": message.id, **changes})
    return decision


def _store_inbound(tx: RawTx, row: dict, payload: dict, now) -> Decision:
    """An inbound message (direction ``in``): stored once, as ``status: received``."""
    carrier_id = row.get("carrier_message_id")
    if carrier_id:
        known = tx.first(_ID_BY_CARRIER_ID, {"key": carrier_id})
        if known is not None:
            row["message_id"] = known.id
            return Decision(duplicate=True)
    message_id = new_id()
    tx.run(
        _INSERT_MESSAGE,
        dict(
            id=message_id,
            direction="in",
            status="received",
            state="received",
            from_number=text(payload.get("from")) or "",
            to_number=text(payload.get("to")) or "",
            text=payload.get("text") if isinstance(payload.get("text"), str) else None,
            media=parse_media(payload.get("media")),
            carrier_message_id=carrier_id,
            segment_count=integer(payload.get("segmentCount")),
            callback_http_method=row["method"],
            created_at=now,
            updated_at=now,
            accepted_at=now,
            final_at=now,
            attempts=0,
            code_mismatch=False,
        ),
    )
    row["message_id"] = message_id
    return Decision(status="received", applied=True)


# ---------------------------------------------------------------- parked events


def attach_parked(session: Session, message_id: str, carrier_id: str | None, now=None) -> int:
    """Apply, in arrival order, the events parked waiting for ``carrier_id``."""
    if not carrier_id:
        return 0
    conn = session.connection()
    tx = RawTx.of(session)
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
        message = tx.first(_BY_ID, {"key": message_id, **params})
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
    return sum(attach_parked(session, message_id, carrier_id) for message_id, carrier_id in pairs)
