"""Tables: messages, the immutable callback event log, the dispatcher lease, idempotency keys."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates
from sqlalchemy.types import TypeDecorator

from .extensions import db
from .ids import new_id

# Python None is SQL NULL (not the JSON text 'null'), so "IS NULL" filters mean what they say.
JSON_NULLABLE = JSON(none_as_null=True)


def tag_key(tag: str | None) -> str | None:
    """The indexed form of a user's tag (see ``Message.tag_key``)."""
    if tag is None or len(tag) <= 64:
        return tag
    return "sha256:" + hashlib.sha256(tag.encode("utf-8", "surrogatepass")).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite keeps no zone; store naive UTC there)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Outbound life cycle (DESIGN.md). Rank decides what may follow what: an event never moves a
# message to a lower rank, and final statuses (rank 5) never change once reached.
STATUS_RANK = {
    "queued": 0,
    "sending": 1,
    "unknown": 2,
    "accepted": 3,
    "sent": 4,
    "delivered": 5,
    "not-delivered": 5,
    "error": 5,
    "rejected": 5,
    "received": 5,
}
FINAL_STATUSES = frozenset(s for s, r in STATUS_RANK.items() if r == 5)
STATUSES = tuple(STATUS_RANK)


class Message(db.Model):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_id)
    direction: Mapped[str] = mapped_column(String(3), default="out")
    from_number: Mapped[str] = mapped_column(String(40))
    to_number: Mapped[str] = mapped_column(String(40))
    text: Mapped[str | None] = mapped_column(Text)
    media: Mapped[list[str] | None] = mapped_column(JSON_NULLABLE)
    tag: Mapped[str | None] = mapped_column(Text)
    # The tag as an index key: itself when short, else its SHA-256 (a tag has no maximum length,
    # and a btree entry does: PostgreSQL refuses index rows over a few kB).
    tag_key: Mapped[str | None] = mapped_column(String(80))
    receipt_requested: Mapped[str | None] = mapped_column(String(8))
    callback_http_method: Mapped[str] = mapped_column(String(4), default="POST")
    callback_timeout: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    carrier_message_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    state: Mapped[str | None] = mapped_column(String(16))
    delivery_state: Mapped[str | None] = mapped_column(String(16))
    delivery_code: Mapped[int | None] = mapped_column(Integer)
    delivery_description: Mapped[str | None] = mapped_column(Text)
    segment_count: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON_NULLABLE)
    # deliveryState and deliveryCode disagree (e.g. delivered with a non-zero code): kept, flagged.
    code_mismatch: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Indexed: the stats rollups find the messages that changed since their last pass.
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, index=True
    )
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    final_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Seconds from carrier acceptance to the final receipt (kept for percentiles in /api/stats).
    receipt_seconds: Mapped[float | None] = mapped_column(Float)
    # Dispatcher bookkeeping: when the row may be claimed next and how often it was tried.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(80))
    # The last carrier exchange for this message (credentials redacted), for the timeline.
    carrier_request: Mapped[dict[str, Any] | None] = mapped_column(JSON_NULLABLE)
    carrier_response: Mapped[dict[str, Any] | None] = mapped_column(JSON_NULLABLE)
    reconciled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Every index here is written again by each status change a callback makes (PostgreSQL
    # updates them all), so an index must earn its place. The dispatcher's claim (queued rows,
    # oldest first) walks ix_messages_status_id.
    __table_args__ = (
        # Filtered lists are newest first (ids sort by time): (filter, id) walks straight to a
        # page without sorting, even with a million rows.
        Index("ix_messages_status_id", "status", "id"),
        Index("ix_messages_from_id", "from_number", "id"),
        Index("ix_messages_to_id", "to_number", "id"),
        Index("ix_messages_tag_key_id", "tag_key", "id"),
    )

    @validates("tag")
    def _keep_tag_key(self, _name: str, value: str | None) -> str | None:
        self.tag_key = tag_key(value)
        return value


class CallbackEvent(db.Model):
    """One received callback (or reconcile answer), raw and never edited after the fact."""

    __tablename__ = "callback_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    via: Mapped[str] = mapped_column(String(10))  # primary | fallback | reconcile
    method: Mapped[str] = mapped_column(String(6))
    raw: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(120))
    user_agent: Mapped[str | None] = mapped_column(String(200))
    # The relay's key for the callback request that carried the event, given on arrival and
    # kept in the journal: unique, so an event that was journaled (and perhaps also committed
    # by a transaction that outlived its budget) is applied exactly once. Reconcile answers
    # have none.
    request_key: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id"))
    carrier_message_id: Mapped[str | None] = mapped_column(String(64), index=True)
    tag: Mapped[str | None] = mapped_column(Text)
    event_type: Mapped[str | None] = mapped_column(String(8))
    direction: Mapped[str | None] = mapped_column(String(3))
    state: Mapped[str | None] = mapped_column(String(16))
    delivery_state: Mapped[str | None] = mapped_column(String(16))
    delivery_code: Mapped[int | None] = mapped_column(Integer)
    # What the event did: applied (moved or refreshed the message) and the status after it.
    applied: Mapped[bool] = mapped_column(Boolean, default=False)
    status_after: Mapped[str | None] = mapped_column(String(16))
    duplicate: Mapped[bool] = mapped_column(Boolean, default=False)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    parked: Mapped[bool] = mapped_column(Boolean, default=False)
    attached_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unparseable: Mapped[bool] = mapped_column(Boolean, default=False)
    code_mismatch: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        # A message's timeline, and (message_id IS NULL) the unmatched events, in id order.
        Index("ix_callback_events_message_id_id", "message_id", "id"),
        Index("uq_callback_events_request_key", "request_key", unique=True),
    )

    @property
    def payload(self) -> dict[str, Any] | None:
        """The event's fields, parsed from ``raw`` (the one stored copy): query parameters for a
        GET callback, the JSON object otherwise (a reconcile answer is the carrier's JSON,
        though its method is GET); None when it cannot be parsed."""
        from .events import parse_raw

        return parse_raw("POST" if self.via == "reconcile" else self.method, self.raw)

    # Declared so the unit of work inserts a new (inbound) message before its first event.
    message: Mapped[Message | None] = relationship(lazy="raise")


class Lease(db.Model):
    """A named lease: the one active dispatcher holds ``dispatcher`` until ``expires_at``."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str] = mapped_column(String(120))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Rollup(db.Model):
    """Counts per 5-minute bucket, kept by the dispatcher's loop so that stats over long
    windows read a few thousand rows instead of scanning a million (see ``rollups.py``)."""

    __tablename__ = "rollups"

    bucket: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # status | receipt | event
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)

    # Day sums and 5-minute buckets are read apart: by kind first, then the time range.
    __table_args__ = (Index("ix_rollups_kind_bucket", "kind", "bucket"),)


class RollupState(db.Model):
    """How far the rollups reach: buckets before ``covered_until`` are in ``rollups``."""

    __tablename__ = "rollup_state"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    covered_until: Mapped[datetime] = mapped_column(UTCDateTime)
    # Rows changed (updated_at) or received (received_at) after this are looked at next pass.
    seen: Mapped[datetime] = mapped_column(UTCDateTime)


class IdempotencyKey(db.Model):
    """The first answer given to an ``Idempotency-Key``, replayed for every repeat."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[Any] = mapped_column(JSON)
    location: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
