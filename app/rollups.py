"""Stats rollups: counts per 5-minute bucket, so stats over long windows stay fast.

``/api/stats`` and the dashboard's overview count messages by status, time to receipt and
callback events over a window. Over a million rows a scan takes seconds, so the dispatcher's
loop (one active process) keeps ``rollups``: for every complete 5-minute bucket, the messages
created in it by status and by time-to-receipt class, and the callbacks received in it.
A pass recomputes the buckets whose rows changed since the previous pass (a receipt for an
old message moves it from ``sent`` to ``delivered`` in its creation bucket), then extends the
covered range. Stats read rollups for the covered buckets and count the rest live, so they
are exact up to one pass (seconds) for old buckets and exact for the recent, uncovered ones.
Nothing on the callback path writes a rollup.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from .models import CallbackEvent, Message, Rollup, RollupState, utcnow
from .receive import lock_for_write

BUCKET = timedelta(minutes=5)
# A transaction may commit a row whose updated_at/received_at is this much in the past.
MARGIN = timedelta(seconds=60)
# New buckets covered per pass: a first pass over a large history is done a day at a time.
MAX_NEW_BUCKETS = 288
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EVENT_KEYS = ("total", "fallback", "duplicate", "late", "unparseable")


def floor(when: datetime) -> datetime:
    """The start of the bucket holding ``when``."""
    return EPOCH + ((when - EPOCH) // BUCKET) * BUCKET


def ceil(when: datetime) -> datetime:
    start = floor(when)
    return start if start == when else start + BUCKET


def receipt_class(seconds: float) -> int:
    """Time-to-receipt classes about 5 % wide (log scale from 10 ms): percentiles merged from
    rollups are within a few percent of the exact value."""
    return int(math.floor(math.log1p(max(seconds, 0.0) * 100) * 20))


def class_value(index: int) -> float:
    """The middle of a time-to-receipt class, in seconds."""
    return (math.expm1(index / 20) + math.expm1((index + 1) / 20)) / 200


def _range(column, lo: datetime | None, hi: datetime | None) -> list:
    return ([column >= lo] if lo is not None else []) + ([column < hi] if hi is not None else [])


def counts(session: Session, lo: datetime | None, hi: datetime | None):
    """Live counts over [lo, hi): messages by status, receipt-time classes, callbacks."""
    created = _range(Message.created_at, lo, hi)
    statuses = Counter(dict(session.execute(
        select(Message.status, func.count()).where(*created).group_by(Message.status)).all()))
    classes = Counter(receipt_class(s) for (s,) in session.execute(
        select(Message.receipt_seconds).where(*created, Message.receipt_seconds.is_not(None))))
    received = _range(CallbackEvent.received_at, lo, hi)
    row = session.execute(select(
        func.count(),
        func.count().filter(CallbackEvent.via == "fallback"),
        func.count().filter(CallbackEvent.duplicate.is_(True)),
        func.count().filter(CallbackEvent.late.is_(True)),
        func.count().filter(CallbackEvent.unparseable.is_(True)),
    ).where(*received, CallbackEvent.via != "reconcile")).one()
    return statuses, classes, Counter(dict(zip(EVENT_KEYS, row, strict=True)))


def _recompute(session: Session, bucket: datetime) -> None:
    statuses, classes, events = counts(session, bucket, bucket + BUCKET)
    session.execute(delete(Rollup).where(Rollup.bucket == bucket))
    rows = [("status", k, n) for k, n in statuses.items()]
    rows += [("receipt", str(k), n) for k, n in classes.items()]
    rows += [("event", k, n) for k, n in events.items() if n]
    if rows:
        session.execute(insert(Rollup), [
            {"bucket": bucket, "kind": kind, "key": key, "count": n} for kind, key, n in rows])


def refresh(session: Session, now: datetime | None = None) -> int:
    """One pass: recompute the covered buckets that changed, cover up to MAX_NEW_BUCKETS more.
    Returns how many new buckets it covered (0: up to date); the caller commits."""
    now = now or utcnow()
    lock_for_write(session)
    state = session.get(RollupState, "main")
    if state is None:
        oldest = [t for t in (session.scalar(select(func.min(Message.created_at))),
                              session.scalar(select(func.min(CallbackEvent.received_at)))) if t]
        start = floor(min(oldest, default=now))
        state = RollupState(name="main", covered_until=start, seen=start)
        session.add(state)
    covered, seen = state.covered_until, state.seen - MARGIN
    dirty = {floor(t) for (t,) in session.execute(select(Message.created_at).where(
        Message.updated_at >= seen, Message.created_at < covered))}
    dirty |= {floor(t) for (t,) in session.execute(select(CallbackEvent.received_at).where(
        CallbackEvent.received_at >= seen, CallbackEvent.received_at < covered))}
    end = min(floor(now), covered + MAX_NEW_BUCKETS * BUCKET)
    bucket = covered
    while bucket < end:
        dirty.add(bucket)
        bucket += BUCKET
    for bucket in sorted(dirty):
        _recompute(session, bucket)
    state.covered_until = max(covered, end)
    state.seen = now
    return max(0, (end - covered) // BUCKET)


def covered_until(session: Session) -> datetime | None:
    state = session.get(RollupState, "main")
    return state.covered_until if state else None


def rolled(session: Session, lo: datetime | None, hi: datetime):
    """Counts from the rollups of the buckets in [lo, hi) (both bucket boundaries)."""
    where = [Rollup.bucket < hi] + ([Rollup.bucket >= lo] if lo else [])
    statuses, classes, events = Counter(), Counter(), Counter()
    for kind, key, n in session.execute(
        select(Rollup.kind, Rollup.key, func.sum(Rollup.count)).where(*where)
        .group_by(Rollup.kind, Rollup.key)
    ):
        if kind == "status":
            statuses[key] += n
        elif kind == "receipt":
            classes[int(key)] += n
        else:
            events[key] += n
    return statuses, classes, events


def percentile(classes: Counter, fraction: float) -> float | None:
    """The nearest-rank percentile of a time-to-receipt class histogram, in seconds."""
    total = sum(classes.values())
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    running = 0
    for index in sorted(classes):
        running += classes[index]
        if running >= rank:
            return class_value(index)
    return None
