"""Reconcile: ask the carrier (``GET message``) what became of a message, and record it."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from . import messaging
from .errors import ApiError
from .ids import is_carrier_id
from .models import Message, utcnow
from .webhooks.outbox import subscriptions

log = logging.getLogger(__name__)


def find_message(session: Session, message_id: str, for_update: bool = False) -> Message:
    """A message by relay id or carrier id ``m-...``; 404 in Catapult's shape otherwise.
    ``for_update``: locked until the transaction ends (PostgreSQL), for deciding on it."""
    if "\x00" in message_id:  # no id holds one, and PostgreSQL refuses to compare it
        message = None
    elif is_carrier_id(message_id):
        stmt = select(Message).where(Message.carrier_message_id == message_id)
        message = session.scalar(stmt.with_for_update() if for_update else stmt)
    else:
        message = session.get(Message, message_id, with_for_update=for_update)
    if message is None:
        raise ApiError(
            404,
            "not-found",
            "message-not-found",
            f"No message with id '{message_id}' (relay id or carrier id).",
        )
    return message


def reconcile(session: Session, client, message_id: str) -> Message:
    """Fetch the carrier's view of the message and store it as a ``via: reconcile`` event.

    No transaction is held open across the carrier call; the caller commits afterwards.
    """
    from .catapult import CatapultError

    message = find_message(session, message_id)
    if not message.carrier_message_id:
        raise ApiError(
            409,
            "conflict",
            "no-carrier-id",
            f"Message '{message.id}' has no carrier id yet (status '{message.status}'): "
            "the carrier cannot be asked about it.",
        )
    carrier_id = message.carrier_message_id
    session.rollback()
    try:
        resource = client.get_message(carrier_id)
    except CatapultError as exc:
        raise ApiError(
            502, "unavailable", "carrier-error", f"The carrier did not answer: {exc}"
        ) from None
    messaging.lock_for_write(session)
    subscriptions(session)  # before the row lock (``webhooks.outbox``)
    message = find_message(session, message_id, for_update=True)
    messaging.record_reconcile(session, message, resource)
    return message


def stale_messages(
    session: Session, now: datetime, after_s: float, default_receipt: str, limit: int
) -> list[Message]:
    """Outbound messages short of a final status with nothing heard for ``after_s`` seconds:
    ``accepted`` (no event at all), ``unknown`` (ambiguous send), and ``sent`` SMS that asked
    for every receipt. Each is asked about at most once per ``after_s``."""
    cutoff = now - timedelta(seconds=after_s)
    wants_receipts = and_(
        Message.status == "sent",
        Message.media.is_(None),
        func.coalesce(Message.receipt_requested, default_receipt) == "all",
    )
    stmt = (
        select(Message)
        .where(
            Message.direction == "out",
            or_(Message.status.in_(("accepted", "unknown")), wants_receipts),
            Message.updated_at < cutoff,
            or_(Message.reconciled_at.is_(None), Message.reconciled_at < cutoff),
        )
        .order_by(Message.updated_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def _find_by_tag(client, message: Message) -> dict | None:
    """An ``unknown`` send has no carrier id: look for our tag among the carrier's messages
    from the same number to the same number since just before we queued it (the list has no
    tag filter, catapult-v1.md §2)."""
    since = (message.created_at - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    found = client.list_messages(
        max_pages=5,
        **{
            "from": message.from_number,
            "to": message.to_number,
            "fromDateTime": since,
            "direction": "out",
            "size": 1000,
        },
    )
    return next((item for item in found if item.get("tag") == message.id), None)


def reconcile_stale(
    engine,
    client,
    *,
    after_s: float,
    default_receipt: str = "all",
    limit: int = 20,
    now: datetime | None = None,
) -> int:
    """The reconciler: ask the carrier about stale messages, one short transaction each, never
    holding one open across a carrier call. Returns how many answers were recorded."""
    from .catapult import CatapultError

    now = now or utcnow()
    with Session(engine) as session:
        targets = [
            (m.id, m.carrier_message_id)
            for m in stale_messages(session, now, after_s, default_receipt, limit)
        ]
    recorded = 0
    for message_id, carrier_id in targets:
        try:
            if carrier_id:
                resource = client.get_message(carrier_id)
            else:
                with Session(engine) as session:
                    message = session.get(Message, message_id)
                    resource = _find_by_tag(client, message)
        except CatapultError as exc:
            log.warning("reconcile of %s failed: %s", message_id, exc)
            resource = None
        with Session(engine) as session:
            messaging.lock_for_write(session)
            subscriptions(session)  # before the row lock (``webhooks.outbox``)
            # Locked (PostgreSQL): a callback may move it while the answer is recorded.
            message = session.get(Message, message_id, with_for_update=True)
            if resource is not None:
                carrier = resource.get("id") or resource.get("messageId")
                if message.carrier_message_id is None and carrier:
                    messaging.record_accepted(session, message, carrier, now=now)
                messaging.record_reconcile(session, message, resource, now=now)
                recorded += 1
            message.reconciled_at = now
            session.commit()
    return recorded
