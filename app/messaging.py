"""The domain: enqueue, record send outcomes, store and apply events, reconcile.

No Flask here and no commits: the caller (a request, the dispatcher, a CLI command) owns the
one transaction. Every function that decides on a message's state first takes the write lock
(``lock_for_write``) so that two workers never decide from the same stale read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .ids import is_carrier_id, new_id
from .models import STATUS_RANK, CallbackEvent, Message, utcnow

OUTBOUND_STATES = ("queued", "sending", "sent", "error")


def lock_for_write(session: Session) -> None:
    """Start the transaction as a writer. SQLite: ``BEGIN IMMEDIATE`` takes the database write
    lock up front (a deferred transaction that reads and then writes can fail with
    SQLITE_BUSY_SNAPSHOT under WAL). PostgreSQL locks the message row with ``FOR UPDATE``
    instead (SQLite's compiler leaves that clause out)."""
    conn = session.connection()
    if conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# ---------------------------------------------------------------- send side


def enqueue(session: Session, items: list[dict[str, Any]], now: datetime | None = None):
    """Insert validated send requests as ``queued`` messages; returns them in order."""
    now = now or utcnow()
    messages = []
    for item in items:
        media = item.get("media")
        message = Message(
            id=new_id(),
            direction="out",
            from_number=item["from"],
            to_number=item["to"],
            text=item.get("text"),
            media=media,
            tag=item.get("tag"),
            receipt_requested=item.get("receiptRequested"),
            callback_http_method=item.get("callbackHttpMethod") or "POST",
            callback_timeout=item.get("callbackTimeout"),
            status="queued",
            created_at=now,
            updated_at=now,
            attempts=0,
            code_mismatch=False,
        )
        session.add(message)
        messages.append(message)
    return messages


def _advance(message: Message, status: str) -> bool:
    """Move ``message`` to ``status`` only if that is forward in the life cycle."""
    if STATUS_RANK[status] > STATUS_RANK[message.status]:
        message.status = status
        return True
    return False


def record_accepted(session, message, carrier_id, request=None, response=None, now=None):
    """The carrier took the message: keep its id, then attach any events parked for that id."""
    now = now or utcnow()
    message.claimed_by = None
    message.carrier_request = request
    message.carrier_response = response
    message.error = None
    if message.carrier_message_id is None:
        message.carrier_message_id = carrier_id
    if message.accepted_at is None:
        message.accepted_at = now
    # An event tagged with our id may have arrived first and moved the message further on.
    _advance(message, "accepted")
    _set_receipt_seconds(message)
    message.updated_at = now
    session.flush()
    attach_parked(session, message, now)


def _set_receipt_seconds(message: Message) -> None:
    """Time to receipt runs from carrier acceptance to the final receipt (never negative: an
    early receipt can be recorded before the send's own response)."""
    if message.accepted_at and message.final_at and message.status != "rejected":
        delta = (message.final_at - message.accepted_at).total_seconds()
        message.receipt_seconds = max(0.0, delta)


def record_rejected(session, message, error, request=None, response=None, now=None):
    """The carrier refused the send (a definite 4xx): final, with the carrier's error."""
    now = now or utcnow()
    message.claimed_by = None
    message.carrier_request = request
    message.carrier_response = response
    message.error = error
    if STATUS_RANK[message.status] <= STATUS_RANK["sending"]:
        message.status = "rejected"
        message.final_at = now
    message.updated_at = now


def record_retry(session, message, retry_at, error=None, request=None, response=None, now=None):
    """Not sent (rate limit, connection refused): back to the queue until ``retry_at``."""
    now = now or utcnow()
    message.claimed_by = None
    message.carrier_request = request
    message.carrier_response = response
    message.error = error
    if message.status == "sending":
        message.status = "queued"
    message.next_attempt_at = retry_at
    message.updated_at = now


def record_unknown(session, message, error, request=None, response=None, now=None):
    """The send may or may not have gone (read timeout, 503): never resend on our own; a later
    event carrying our tag, or a reconcile, settles it."""
    now = now or utcnow()
    message.claimed_by = None
    message.carrier_request = request
    message.carrier_response = response
    message.error = error
    if message.status == "sending":
        message.status = "unknown"
    message.updated_at = now


# ---------------------------------------------------------------- receive side


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return None
    value = str(value).strip()
    return value or None


def _int(value: Any) -> int | None:
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


def store_event(session, *, via, method, raw, payload, content_type=None, user_agent=None,
                now=None) -> CallbackEvent:
    """Insert the raw event and apply it. The event is stored whatever happens next."""
    now = now or utcnow()
    lock_for_write(session)
    event = CallbackEvent(
        received_at=now,
        via=via,
        method=method,
        raw=raw,
        content_type=content_type,
        user_agent=user_agent,
        payload=payload if isinstance(payload, dict) else None,
        applied=False,
        duplicate=False,
        late=False,
        parked=False,
        unparseable=False,
        code_mismatch=False,
    )
    if not isinstance(payload, dict):
        event.unparseable = True
        session.add(event)
        return event
    event.carrier_message_id = _text(payload.get("messageId"))
    event.tag = _text(payload.get("tag"))
    event.event_type = _text(payload.get("eventType"))
    event.direction = (_text(payload.get("direction")) or "").lower() or None
    event.state = (_text(payload.get("state")) or "").lower() or None
    event.delivery_state = (_text(payload.get("deliveryState")) or "").lower() or None
    event.delivery_code = _int(payload.get("deliveryCode"))
    if event.carrier_message_id is None and event.tag is None:
        event.unparseable = True
        session.add(event)
        return event
    session.add(event)
    if event.direction == "in" or event.state == "received":
        _apply_inbound(session, event, payload, now)
        return event
    message = correlate(session, event)
    if message is None:
        # Raced the send's response (or not ours yet): parked until its carrier id is known.
        event.parked = True
        return event
    apply_event(session, message, event, now)
    return event


def correlate(session: Session, event: CallbackEvent) -> Message | None:
    """``tag`` → relay id first (works before the carrier id is recorded), then carrier id."""
    if event.tag and not is_carrier_id(event.tag):
        message = session.scalar(select(Message).where(Message.id == event.tag).with_for_update())
        if message is not None and message.direction == "out":
            return message
    if event.carrier_message_id:
        stmt = select(Message).where(Message.carrier_message_id == event.carrier_message_id)
        return session.scalar(stmt.with_for_update())
    return None


def _is_duplicate(session: Session, message: Message, event: CallbackEvent) -> bool:
    stmt = (
        select(CallbackEvent.id)
        .where(
            CallbackEvent.message_id == message.id,
            CallbackEvent.id != event.id if event.id is not None else True,
            CallbackEvent.duplicate.is_(False),
            CallbackEvent.state.is_(None) if event.state is None
            else CallbackEvent.state == event.state,
            CallbackEvent.delivery_state.is_(None) if event.delivery_state is None
            else CallbackEvent.delivery_state == event.delivery_state,
            CallbackEvent.delivery_code.is_(None) if event.delivery_code is None
            else CallbackEvent.delivery_code == event.delivery_code,
        )
        .limit(1)
    )
    with session.no_autoflush:
        return session.scalar(stmt) is not None


def apply_event(session: Session, message: Message, event: CallbackEvent, now=None) -> None:
    """The state machine: duplicates are kept but not re-applied; nothing moves backwards."""
    now = now or utcnow()
    event.message_id = message.id
    if message.carrier_message_id is None and event.carrier_message_id:
        # A tagged event beat the send's response: its messageId is the carrier id.
        taken = session.scalar(
            select(Message.id).where(Message.carrier_message_id == event.carrier_message_id)
        )
        if taken is None:
            message.carrier_message_id = event.carrier_message_id
    if _is_duplicate(session, message, event):
        event.duplicate = True
        return
    status = event_status(event.state, event.delivery_state)
    if status is None:
        event.unparseable = True  # an outbound state we do not know: kept for review
        return
    if event.delivery_state in ("delivered", "not-delivered") and event.delivery_code is not None:
        mismatch = (event.delivery_state == "delivered") != (event.delivery_code == 0)
        event.code_mismatch = mismatch
    current = STATUS_RANK[message.status]
    new = STATUS_RANK[status]
    if current == 5 or new < current:
        event.late = True  # flagged on the timeline, never applied
        return
    message.status = status
    message.state = event.state or message.state
    if event.delivery_state:
        message.delivery_state = event.delivery_state
    if status in ("delivered", "not-delivered", "error") or event.delivery_code is not None:
        message.delivery_code = event.delivery_code
        description = _text((event.payload or {}).get("deliveryDescription"))
        message.delivery_description = description
    segments = _int((event.payload or {}).get("segmentCount"))
    if segments is not None:
        message.segment_count = segments
    if event.code_mismatch:
        message.code_mismatch = True
    if new == 5 and message.final_at is None:
        message.final_at = event.received_at or now
        _set_receipt_seconds(message)
    message.updated_at = now
    event.applied = True
    event.status_after = message.status


def _apply_inbound(session: Session, event: CallbackEvent, payload: dict, now) -> None:
    """An inbound message (direction ``in``): stored once, as ``status: received``."""
    carrier_id = event.carrier_message_id
    message = None
    if carrier_id:
        message = session.scalar(select(Message).where(Message.carrier_message_id == carrier_id))
    if message is not None:
        event.message_id = message.id
        event.duplicate = True
        return
    message = Message(
        id=new_id(),
        direction="in",
        from_number=_text(payload.get("from")) or "",
        to_number=_text(payload.get("to")) or "",
        text=payload.get("text") if isinstance(payload.get("text"), str) else None,
        media=parse_media(payload.get("media")),
        status="received",
        state="received",
        carrier_message_id=carrier_id,
        segment_count=_int(payload.get("segmentCount")),
        callback_http_method=event.method,
        created_at=now,
        updated_at=now,
        accepted_at=now,
        final_at=now,
        attempts=0,
        code_mismatch=False,
    )
    session.add(message)
    event.message_id = message.id
    event.applied = True
    event.status_after = "received"


def attach_parked(session: Session, message: Message, now=None) -> int:
    """Apply, in arrival order, the events that were parked waiting for this carrier id."""
    if not message.carrier_message_id:
        return 0
    parked = session.scalars(
        select(CallbackEvent)
        .where(
            CallbackEvent.carrier_message_id == message.carrier_message_id,
            CallbackEvent.message_id.is_(None),
            CallbackEvent.parked.is_(True),
        )
        .order_by(CallbackEvent.id)
    ).all()
    now = now or utcnow()
    for event in parked:
        event.attached_at = now
        apply_event(session, message, event, now)
        session.flush()
    return len(parked)


def attach_parked_sweep(session: Session, limit: int = 500) -> int:
    """Attach parked events whose carrier id became known in a concurrent transaction."""
    lock_for_write(session)
    rows = session.execute(
        select(Message)
        .join(CallbackEvent, CallbackEvent.carrier_message_id == Message.carrier_message_id)
        .where(CallbackEvent.message_id.is_(None), CallbackEvent.parked.is_(True))
        .distinct()
        .limit(limit)
    ).scalars().all()
    return sum(attach_parked(session, m) for m in rows)


# ---------------------------------------------------------------- reconcile


def record_reconcile(session: Session, message: Message, resource: dict, now=None):
    """Store the carrier's ``GET message`` answer as an event (``via: reconcile``), apply it."""
    import json

    now = now or utcnow()
    payload = dict(resource)
    payload.setdefault("messageId", resource.get("id"))
    if not payload.get("tag"):
        payload["tag"] = message.id if message.direction == "out" else None
    event = store_event(
        session,
        via="reconcile",
        method="GET",
        raw=json.dumps(resource, sort_keys=True),
        payload=payload,
        content_type="application/json",
        now=now,
    )
    message.reconciled_at = now
    return event


def release_stale_claims(session: Session, holder: str, now=None) -> int:
    """Rows left ``sending`` by a dispatcher that died: they may have gone, so ``unknown``."""
    now = now or utcnow()
    result = session.execute(
        update(Message)
        .where(Message.status == "sending", Message.claimed_by != holder)
        .values(status="unknown", claimed_by=None, updated_at=now,
                error={"category": "unavailable", "code": "dispatcher-lost",
                       "message": "The dispatcher stopped while sending; outcome unknown."})
    )
    return result.rowcount

