"""Read-side queries for the API and the dashboard: lists with keyset paging, and stats."""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from . import rollups
from .models import STATUSES, CallbackEvent, Message, tag_key
from .schemas import EventSchema

event_schema = EventSchema()

MESSAGE_FILTERS = {
    "status": Message.status,
    "direction": Message.direction,
    "from_": Message.from_number,
    "to": Message.to_number,
}


def message_condition(name: str, value):
    """The WHERE clause for one equality filter of the message list (``tag`` goes through its
    indexed key, then compares the full text)."""
    if name == "tag":
        return and_(Message.tag_key == tag_key(value), Message.tag == value)
    return MESSAGE_FILTERS[name] == value


def list_messages(session: Session, filters: dict, limit: int, after: str | None = None):
    """Newest first (ids sort by creation time); ``after`` is the last id of the previous page."""
    stmt = select(Message)
    for name in (*MESSAGE_FILTERS, "tag"):
        if filters.get(name) is not None:
            stmt = stmt.where(message_condition(name, filters[name]))
    if filters.get("since") is not None:
        stmt = stmt.where(Message.created_at >= filters["since"])
    if filters.get("until") is not None:
        stmt = stmt.where(Message.created_at < filters["until"])
    if after is not None:
        stmt = stmt.where(Message.id < after)
    return session.scalars(stmt.order_by(Message.id.desc()).limit(limit)).all()


def list_events(session: Session, filters: dict, limit: int, after: int | None = None):
    """The callback log, newest first; ``matched`` false means not attached to any message."""
    stmt = select(CallbackEvent)
    matched = filters.get("matched")
    if matched is True:
        stmt = stmt.where(CallbackEvent.message_id.is_not(None))
    elif matched is False:
        stmt = stmt.where(CallbackEvent.message_id.is_(None))
    if filters.get("via"):
        stmt = stmt.where(CallbackEvent.via == filters["via"])
    if filters.get("carrierMessageId"):
        stmt = stmt.where(CallbackEvent.carrier_message_id == filters["carrierMessageId"])
    if filters.get("method"):
        stmt = stmt.where(CallbackEvent.method == filters["method"].upper())
    if filters.get("since") is not None:
        stmt = stmt.where(CallbackEvent.received_at >= filters["since"])
    if after is not None:
        stmt = stmt.where(CallbackEvent.id < after)
    return session.scalars(stmt.order_by(CallbackEvent.id.desc()).limit(limit)).all()


def _percentile(session: Session, base, count: int, fraction: float) -> float | None:
    """The exact nearest-rank percentile of ``receipt_seconds`` among ``count`` rows."""
    if count == 0:
        return None
    offset = max(0, min(count - 1, math.ceil(fraction * count) - 1))
    stmt = (
        select(Message.receipt_seconds)
        .where(*base, Message.receipt_seconds.is_not(None))
        .order_by(Message.receipt_seconds)
        .limit(1)
        .offset(offset)
    )
    return session.scalar(stmt)


def stats(session: Session, since: datetime | None) -> dict:
    """What /api/stats and the dashboard overview show, over messages created (and callbacks
    received) since ``since``. Complete 5-minute buckets come from the rollups (percentiles then
    within ~5 %), the rest is counted live, exactly."""
    covered = rollups.covered_until(session)
    first = rollups.ceil(since) if since is not None else None
    pruned_unmatched = 0
    if covered is None or (first is not None and first >= covered):
        statuses, _, events = rollups.counts(session, since, None)
        base = [Message.created_at >= since] if since is not None else []
        timed = (
            session.scalar(select(func.count()).where(*base, Message.receipt_seconds.is_not(None)))
            or 0
        )
        p50, p95 = (_percentile(session, base, timed, f) for f in (0.50, 0.95))
    else:
        statuses, classes, events = rollups.rolled(session, first, covered)
        live = [(covered, None)] + ([(since, first)] if since is not None and since < first else [])
        for lo, hi in live:
            more = rollups.counts(session, lo, hi)
            statuses, classes, events = statuses + more[0], classes + more[1], events + more[2]
        timed = sum(classes.values())
        p50, p95 = (rollups.percentile(classes, f) for f in (0.50, 0.95))
        # Unmatched events are counted live, plus those retention deleted from covered buckets.
        pruned_unmatched = rollups.pruned_unmatched(session, first)
    counts = {status: statuses.get(status, 0) for status in STATUSES}
    finished = counts["delivered"] + counts["not-delivered"] + counts["error"]
    unmatched = (
        session.scalar(
            select(func.count()).where(
                CallbackEvent.message_id.is_(None),
                *([CallbackEvent.received_at >= since] if since is not None else []),
            )
        )
        or 0
    ) + pruned_unmatched
    total_events = events["total"]
    return {
        "since": since.isoformat() if since else None,
        "total": sum(counts.values()),
        "counts": counts,
        "deliveryRate": (counts["delivered"] / finished) if finished else None,
        "timeToReceipt": {"count": timed, "p50": p50, "p95": p95},
        "events": {
            "total": total_events,
            "viaFallback": events["fallback"],
            "fallbackShare": (events["fallback"] / total_events) if total_events else None,
            "unmatched": unmatched,
            "duplicates": events["duplicate"],
            "late": events["late"],
            "unparseable": events["unparseable"],
        },
    }
