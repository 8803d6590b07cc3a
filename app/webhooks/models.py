"""Tables of the onward notifications: the user's endpoints, and the outbox of deliveries."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..ids import new_id
from ..models import JSON_NULLABLE, UTCDateTime, utcnow

# Every status change a message can make that is worth telling (queued and sending are the
# relay's own bookkeeping), and inbound messages (DESIGN.md "Onward notifications").
NOTIFIED_STATUSES = (
    "accepted",
    "sent",
    "delivered",
    "not-delivered",
    "error",
    "rejected",
    "unknown",
    "received",
)
EVENT_TYPES = tuple(f"message.{status}" for status in NOTIFIED_STATUSES)
ALL_EVENTS = "*"
# Delivery states: pending (due at next_attempt_at, or claimed by a worker until
# claimed_until), succeeded (a 2xx), failed (the schedule ran out; can be replayed).
DELIVERY_STATES = ("pending", "succeeded", "failed")


def new_endpoint_id() -> str:
    return new_id("wh-")


class WebhookEndpoint(db.Model):
    """A URL of the user's that receives signed notifications of the types it subscribes to."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_endpoint_id)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)  # event types, or ["*"]
    secret: Mapped[str] = mapped_column(String(100))  # whsec_ + base64 of 32 random bytes
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebhookDelivery(db.Model):
    """One notification for one endpoint: written in the transaction of the status change it
    tells (the outbox), then delivered, retried and recorded by the workers.

    Rows are inserted on the callback path, so every index here costs each notified change:
    (message, endpoint, id) keeps the order per message and endpoint and lets retention see
    a message's pending deliveries; (status, next attempt) is the workers' claim; (endpoint,
    id) the endpoint's delivery list."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The ``webhook-id`` header: the same on every attempt, so the receiver can deduplicate.
    uid: Mapped[str] = mapped_column(String(40))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The signed body, rendered when the change was made: it tells the message as it was then.
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # every attempt, replays too
    step: Mapped[int] = mapped_column(Integer, default=0)  # attempts in the current schedule
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(80))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Each attempt: {at, statusCode, error, latencyMs, nextAttemptAt}; the latest ATTEMPT_LOG.
    attempt_log: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON_NULLABLE)

    @property
    def attempt_list(self) -> list[dict[str, Any]]:
        return list(self.attempt_log or [])

    @property
    def payload(self) -> dict[str, Any]:
        """The body, parsed: ``{type, timestamp, data}``."""
        return json.loads(self.body)

    __table_args__ = (
        Index("ix_webhook_deliveries_message_endpoint_id", "message_id", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_id", "endpoint_id", "id"),
    )
