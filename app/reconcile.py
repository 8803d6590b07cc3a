"""Reconcile: ask the carrier (``GET message``) what became of a message, and record it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import messaging
from .errors import ApiError
from .ids import is_carrier_id
from .models import Message


def find_message(session: Session, message_id: str) -> Message:
    """A message by relay id or carrier id ``m-...``; 404 in Catapult's shape otherwise."""
    if is_carrier_id(message_id):
        message = session.scalar(select(Message).where(Message.carrier_message_id == message_id))
    else:
        message = session.get(Message, message_id)
    if message is None:
        raise ApiError(
            404, "not-found", "message-not-found",
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
            409, "conflict", "no-carrier-id",
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
    message = find_message(session, message_id)
    messaging.record_reconcile(session, message, resource)
    return message
