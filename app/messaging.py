"""The send side of the domain: enqueue, record send outcomes, record reconcile answers.

(The receive side, storing and applying callback events, is ``receive.py``.)

No Flask here and no commits: the caller (a request, the dispatcher, a CLI command) owns the
one transaction. Every function that decides on a message's state first takes the write lock
(``lock_for_write``) so that two workers never decide from the same stale read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .catapult import redact_credentials, redact_message
from .db_setup import lock_for_write  # noqa: F401  (re-exported for callers)
from .events import event_status  # noqa: F401
from .ids import new_id
from .models import STATUS_RANK, Message, utcnow
from .rawsql import RawTx
from .receive import (  # noqa: F401  (the receive side, re-exported for callers)
    attach_parked,
    attach_parked_sweep,
    lock_carrier_id,
    lock_message,
    store_event,
)
from .webhooks.outbox import emit_message, subscriptions

OUTBOUND_STATES = ("queued", "sending", "sent", "error")


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


def _exchange(message: Message, request, response, error) -> None:
    """Keep the last carrier exchange (for the timeline) and let go of the dispatcher's claim."""
    message.claimed_by = None
    # The carrier may echo our callback URLs, credentials and all (an error naming the URL):
    # nothing with them is stored.
    message.carrier_request = redact_credentials(request)
    message.carrier_response = redact_credentials(response)
    message.error = redact_credentials(error)


def record_accepted(session, message, carrier_id, request=None, response=None, now=None):
    """The carrier took the message: keep its id, then attach any events parked for that id."""
    now = now or utcnow()
    if carrier_id and message.carrier_message_id is None:
        # Before the id is written (see ``receive.lock_carrier_id``: an untagged event looking
        # for this id waits for this transaction, or this one for it; never both ways).
        tx = RawTx.of(session)
        lock_message(tx, message.id)
        lock_carrier_id(tx, carrier_id)
    _exchange(message, request, response, None)
    if message.carrier_message_id is None:
        message.carrier_message_id = carrier_id
    if message.accepted_at is None:
        message.accepted_at = now
    # An event tagged with our id may have arrived first and moved the message further on.
    advanced = _advance(message, "accepted")
    _set_receipt_seconds(message)
    message.updated_at = now
    if advanced:
        emit_message(session, message, now)  # before the parked events' own changes
    session.flush()
    if attach_parked(session, message.id, message.carrier_message_id, now):
        session.expire(message)  # the parked events changed the row underneath


def _set_receipt_seconds(message: Message) -> None:
    """Time to receipt runs from carrier acceptance to the final receipt (never negative: an
    early receipt can be recorded before the send's own response)."""
    if message.accepted_at and message.final_at and message.status != "rejected":
        delta = (message.final_at - message.accepted_at).total_seconds()
        message.receipt_seconds = max(0.0, delta)


def record_rejected(session, message, error, request=None, response=None, now=None):
    """The carrier refused the send (a definite 4xx): final, with the carrier's error."""
    now = now or utcnow()
    _exchange(message, request, response, error)
    rejected = STATUS_RANK[message.status] <= STATUS_RANK["sending"]
    if rejected:
        message.status = "rejected"
        message.final_at = now
    message.updated_at = now
    if rejected:
        emit_message(session, message, now)


def record_retry(session, message, retry_at, error=None, request=None, response=None, now=None):
    """Not sent (rate limit, connection refused): back to the queue until ``retry_at``."""
    now = now or utcnow()
    _exchange(message, request, response, error)
    if message.status == "sending":
        message.status = "queued"
    message.next_attempt_at = retry_at
    message.updated_at = now


def record_unknown(session, message, error, request=None, response=None, now=None):
    """The send may or may not have gone (read timeout, 503): never resend on our own; a later
    event carrying our tag, or a reconcile, settles it."""
    now = now or utcnow()
    _exchange(message, request, response, error)
    unknown = message.status == "sending"
    if unknown:
        message.status = "unknown"
    message.updated_at = now
    if unknown:
        emit_message(session, message, now)


# ---------------------------------------------------------------- reconcile


def record_reconcile(session: Session, message: Message, resource: dict, now=None):
    """Store the carrier's ``GET message`` answer as an event (``via: reconcile``), apply it."""
    import json

    now = now or utcnow()
    # The carrier's resource shows the callbackUrl/fallbackUrl it was given, with the callback
    # credentials in them: those are never stored (the event is shown by the API).
    resource = redact_credentials(redact_message(resource))
    payload = dict(resource)
    payload.setdefault("messageId", resource.get("id"))
    if not payload.get("tag"):
        payload["tag"] = message.id if message.direction == "out" else None
    session.flush()
    event = store_event(
        session,
        via="reconcile",
        method="GET",
        raw=json.dumps(resource, sort_keys=True),
        payload=payload,
        content_type="application/json",
        now=now,
    )
    session.expire(message)  # store_event updated the row with SQL, not through the ORM
    message.reconciled_at = now
    return event


def release_stale_claims(session: Session, holder: str, now=None) -> int:
    """Rows left ``sending`` by a dispatcher that died: they may have gone, so ``unknown``."""
    error = {
        "category": "unavailable",
        "code": "dispatcher-lost",
        "message": "The dispatcher stopped while sending; outcome unknown.",
    }
    return release_claims(session, Message.claimed_by != holder, error, now)


def release_claims(session: Session, claimed, error: dict, now=None) -> int:
    """``sending`` rows matching ``claimed`` become ``unknown`` with ``error``, each change
    notified (row by row: they are at most a few carrier batches)."""
    now = now or utcnow()
    subscriptions(session)  # before the row locks (``webhooks.outbox``)
    stmt = select(Message).where(Message.status == "sending", claimed)
    if session.get_bind().dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    messages = session.scalars(stmt).all()
    for message in messages:
        message.status, message.claimed_by, message.updated_at = "unknown", None, now
        message.error = error
        emit_message(session, message, now)
    session.flush()
    return len(messages)
