"""The transactional outbox: a notification row written in the transaction of the status change.

Every path that changes a message's status (callbacks and journal replay through
``receive``, the dispatcher's outcomes, reconciliation) calls ``emit`` inside its own write
transaction, so a change and its notification commit or roll back together.

Subscriptions are read once per transaction (``subscriptions``), never per event: on the
callback path that is one small SELECT per batch, and no other statement at all while no
enabled endpoint exists. Why reading them in the transaction is enough for "a change
committed after an endpoint was created is notified":

- SQLite: every write transaction holds the database write lock from its ``BEGIN
  IMMEDIATE``, endpoint writes included, so the read sees every endpoint committed before
  the change's transaction began, and an endpoint committed later came after the change.
- PostgreSQL (read committed, several processes): the read is preceded by a *shared*
  transaction-level advisory lock, and every endpoint write takes the same lock *exclusive*
  (``lock_endpoints``). A change transaction that read first finishes (commits) before the
  endpoint write can commit; one that comes second waits for the endpoint's commit and its
  read, a new statement, sees it. The shared lock is taken before any message row lock on
  every path (``prepare``), so nobody waits for the endpoint lock while holding a row that
  another lock holder waits for.

No per-process cache: a cache would have to ask the database whether it is stale, which is
the same one statement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, bindparam, event, func, insert, select
from sqlalchemy.orm import Session as OrmSession

from ..ids import new_id
from ..rawsql import RawTx
from .models import ALL_EVENTS, NOTIFIED_STATUSES, WebhookDelivery, WebhookEndpoint

D = WebhookDelivery.__table__
W = WebhookEndpoint.__table__
# The advisory-lock key of the endpoint set (PostgreSQL); any constant no other lock uses.
ENDPOINTS_LOCK = 0x77686B5F656E6470  # "whk_endp"
_SESSION_KEY = "relay.webhook_subscriptions"

_SHARED_LOCK = select(func.pg_advisory_xact_lock_shared(bindparam("key", type_=BigInteger)))
_ENABLED = select(W.c.id, W.c.events).where(W.c.enabled.is_(True))
_INSERT = insert(D)


@dataclass(slots=True)
class Subscriptions:
    """The enabled endpoints of one transaction, by the event type they receive."""

    by_type: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_type)

    def endpoints(self, status: str) -> tuple[str, ...]:
        return self.by_type.get(status, ())


NONE = Subscriptions()


def _read(tx: RawTx) -> Subscriptions:
    if tx.dialect.name == "postgresql":
        tx.first(_SHARED_LOCK, {"key": ENDPOINTS_LOCK})
    rows = tx.all(_ENABLED, {})
    if not rows:
        return NONE
    by_type: dict[str, list[str]] = {}
    for row in rows:
        events = set(row.events or ())
        for status in NOTIFIED_STATUSES:
            if ALL_EVENTS in events or f"message.{status}" in events:
                by_type.setdefault(status, []).append(row.id)
    return Subscriptions({k: tuple(v) for k, v in by_type.items()})


def subscriptions(target, tx: RawTx | None = None) -> Subscriptions:
    """The subscriptions of ``target``'s current transaction, read at its first call."""
    if isinstance(target, RawTx):
        if target.webhooks is None:
            target.webhooks = _read(target)
        return target.webhooks
    if not isinstance(target, OrmSession):  # a Connection: its info outlives the transaction
        return _read(tx or RawTx.of(target))
    found = target.info.get(_SESSION_KEY)
    if found is None:
        found = target.info[_SESSION_KEY] = _read(tx or RawTx.of(target))
    return found


def prepare(target: OrmSession | RawTx) -> Subscriptions:
    """Read the subscriptions now, before the transaction locks any message row (the lock
    order of the module docstring); later ``emit`` calls reuse them."""
    return subscriptions(target)


@event.listens_for(OrmSession, "after_transaction_end")
def _forget(session, _transaction) -> None:
    # The next transaction of a session reads the subscriptions again.
    session.info.pop(_SESSION_KEY, None)


def lock_endpoints(session: OrmSession) -> None:
    """Endpoint writes: exclusive against the change transactions' shared lock (PostgreSQL;
    on SQLite the write lock taken by the caller serializes them)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger))),
            {"key": ENDPOINTS_LOCK},
        )


# ---------------------------------------------------------------- the body


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _error(value: Any) -> dict | None:
    if value is None:
        return None
    return {k: str(value[k]) for k in ("category", "code", "message") if value.get(k) is not None}


def resource(m: Mapping[str, Any]) -> dict[str, Any]:
    """The message resource (``schemas.MessageSchema``'s output, field for field) from the
    message's columns, without marshmallow: this runs on the callback path."""
    code, segments = m["delivery_code"], m["segment_count"]
    return {
        "id": m["id"],
        "direction": m["direction"],
        "from": m["from_number"],
        "to": m["to_number"],
        "text": m["text"],
        "media": None if m["media"] is None else [str(u) for u in m["media"]],
        "tag": m["tag"],
        "receiptRequested": m["receipt_requested"],
        "callbackHttpMethod": m["callback_http_method"],
        "status": m["status"],
        "carrierMessageId": m["carrier_message_id"],
        "state": m["state"],
        "deliveryState": m["delivery_state"],
        "deliveryCode": None if code is None else int(code),
        "deliveryDescription": m["delivery_description"],
        "segmentCount": None if segments is None else int(segments),
        "error": _error(m["error"]),
        "codeMismatch": bool(m["code_mismatch"]),
        "createdAt": _iso(m["created_at"]),
        "updatedAt": _iso(m["updated_at"]),
        "acceptedAt": _iso(m["accepted_at"]),
        "finalAt": _iso(m["final_at"]),
    }


RESOURCE_COLUMNS = (
    "id",
    "direction",
    "from_number",
    "to_number",
    "text",
    "media",
    "tag",
    "receipt_requested",
    "callback_http_method",
    "status",
    "carrier_message_id",
    "state",
    "delivery_state",
    "delivery_code",
    "delivery_description",
    "segment_count",
    "error",
    "code_mismatch",
    "created_at",
    "updated_at",
    "accepted_at",
    "final_at",
)


def body(status: str, message: Mapping[str, Any], when: datetime) -> str:
    """The notification's JSON body (ASCII: every character escaped), signed as is."""
    document = {"type": f"message.{status}", "timestamp": _iso(when), "data": resource(message)}
    return json.dumps(document, separators=(",", ":"))


# ---------------------------------------------------------------- emitting


def emit(
    target: OrmSession | RawTx,
    status: str,
    message: Mapping[str, Any],
    when: datetime,
    tx: RawTx | None = None,
) -> int:
    """Queue ``message.<status>`` for every endpoint subscribed to it, in the caller's
    transaction; ``message`` holds the message's columns after the change. Returns the rows
    written (none, and no work at all, when nobody subscribes)."""
    subs = subscriptions(target, tx)
    endpoints = subs.endpoints(status) if subs else ()
    if not endpoints:
        return 0
    tx = tx or (target if isinstance(target, RawTx) else RawTx.of(target))
    text = body(status, message, when)
    for endpoint_id in endpoints:
        tx.run(
            _INSERT,
            {
                "uid": new_id("msg_"),
                "endpoint_id": endpoint_id,
                "message_id": message["id"],
                "type": f"message.{status}",
                "occurred_at": when,
                "body": text,
                "status": "pending",
                "attempts": 0,
                "step": 0,
                "next_attempt_at": when,
                "claimed_by": None,
                "claimed_until": None,
                "last_attempt_at": None,
                "last_status_code": None,
                "last_error": None,
                "finished_at": None,
                "attempt_log": None,
            },
        )
    return len(endpoints)


class _Columns(Mapping):
    """An ORM message seen as its columns (``resource`` reads it like a fetched row)."""

    __slots__ = ("message",)

    def __init__(self, message) -> None:
        self.message = message

    def __getitem__(self, key: str) -> Any:
        return getattr(self.message, key)

    def __iter__(self):
        return iter(RESOURCE_COLUMNS)

    def __len__(self) -> int:
        return len(RESOURCE_COLUMNS)


def emit_message(session: OrmSession, message, when: datetime) -> int:
    """``emit`` for an ORM message whose status just changed (the dispatcher's outcomes)."""
    if message.status not in NOTIFIED_STATUSES:
        return 0
    return emit(session, message.status, _Columns(message), when)
