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

Retention (``retention.py``) deletes old rows that these counts were made from. So that a later
recompute of such a bucket (another message in it changed) does not count it lower, each prune
batch records what it deleted as ``pruned-*`` rows of the bucket, in its own transaction, and a
recompute adds them to the live counts. Refresh and prune batches are serialized (``lock``).
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from .db_setup import lock_for_write
from .models import CallbackEvent, Message, Rollup, RollupState, utcnow

BUCKET = timedelta(minutes=5)
DAY = timedelta(days=1)  # complete days are summed once more, so a month reads ~30 x fewer rows
# A transaction may commit a row whose updated_at/received_at is this much in the past.
MARGIN = timedelta(seconds=60)
# New buckets covered per pass (4 hours): a first pass over a long history holds the write
# lock for a fraction of a second at a time.
MAX_NEW_BUCKETS = 48
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EVENT_KEYS = ("total", "fallback", "duplicate", "late", "unparseable")
KINDS = ("status", "receipt", "event")
DAY_KINDS = tuple(f"day-{kind}" for kind in KINDS)
PRUNED_KINDS = tuple(f"pruned-{kind}" for kind in KINDS)
# Any constant: the PostgreSQL advisory lock that serializes rollup passes and prune batches.
ADVISORY_KEY = 0x72656C6179


def lock(session: Session) -> None:
    """Start the transaction as a writer and, on PostgreSQL (whose writers do not queue on one
    lock), take the rollups' advisory lock: a pass must not count live rows before a prune
    batch commits and read that batch's ``pruned-*`` rows after it (counting them twice)."""
    conn = lock_for_write(session)
    if conn.dialect.name != "sqlite":
        conn.execute(select(func.pg_advisory_xact_lock(ADVISORY_KEY)))


def floor(when: datetime, size: timedelta = BUCKET) -> datetime:
    """The start of the bucket (or day) holding ``when``."""
    return EPOCH + ((when - EPOCH) // size) * size


def ceil(when: datetime, size: timedelta = BUCKET) -> datetime:
    start = floor(when, size)
    return start if start == when else start + size


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
    # Grouping by an expression keeps SQLite off the status index (walking all of it to avoid
    # a sort) and on the created_at range, which is what makes a window cheap.
    status = Message.status.concat("")
    statuses = Counter(
        dict(session.execute(select(status, func.count()).where(*created).group_by(status)).all())
    )
    classes = Counter(
        receipt_class(s)
        for (s,) in session.execute(
            select(Message.receipt_seconds).where(*created, Message.receipt_seconds.is_not(None))
        )
    )
    received = _range(CallbackEvent.received_at, lo, hi)
    row = session.execute(
        select(
            func.count(),
            func.count().filter(CallbackEvent.via == "fallback"),
            func.count().filter(CallbackEvent.duplicate.is_(True)),
            func.count().filter(CallbackEvent.late.is_(True)),
            func.count().filter(CallbackEvent.unparseable.is_(True)),
        ).where(*received, CallbackEvent.via != "reconcile")
    ).one()
    return statuses, classes, Counter(dict(zip(EVENT_KEYS, row, strict=True)))


def _recompute(session: Session, bucket: datetime) -> None:
    statuses, classes, events = counts(session, bucket, bucket + BUCKET)
    # Rows retention deleted from this bucket still count (``unmatched`` is read apart).
    for kind, key, n in session.execute(
        select(Rollup.kind, Rollup.key, Rollup.count).where(
            Rollup.bucket == bucket, Rollup.kind.in_(PRUNED_KINDS)
        )
    ):
        if kind == "pruned-status":
            statuses[key] += n
        elif kind == "pruned-receipt":
            classes[int(key)] += n
        elif key != "unmatched":
            events[key] += n
    session.execute(delete(Rollup).where(Rollup.bucket == bucket, Rollup.kind.in_(KINDS)))
    rows = [("status", k, n) for k, n in statuses.items()]
    rows += [("receipt", str(k), n) for k, n in classes.items()]
    rows += [("event", k, n) for k, n in events.items() if n]
    if rows:
        session.execute(
            insert(Rollup),
            [{"bucket": bucket, "kind": kind, "key": key, "count": n} for kind, key, n in rows],
        )


def _sum_day(session: Session, day: datetime) -> None:
    """A complete day's rollups, summed from its 5-minute buckets (kinds ``day-...``)."""
    session.execute(delete(Rollup).where(Rollup.bucket == day, Rollup.kind.in_(DAY_KINDS)))
    rows = session.execute(
        select(Rollup.kind, Rollup.key, func.sum(Rollup.count))
        .where(Rollup.bucket >= day, Rollup.bucket < day + DAY, Rollup.kind.in_(KINDS))
        .group_by(Rollup.kind, Rollup.key)
    ).all()
    if rows:
        session.execute(
            insert(Rollup),
            [
                {"bucket": day, "kind": f"day-{kind}", "key": key, "count": n}
                for kind, key, n in rows
            ],
        )


def refresh(session: Session, now: datetime | None = None) -> int:
    """One pass: recompute the covered buckets that changed, cover up to MAX_NEW_BUCKETS more.
    Returns how many new buckets it covered (0: up to date); the caller commits."""
    now = now or utcnow()
    lock(session)
    state = session.get(RollupState, "main")
    if state is None:
        oldest = [
            t
            for t in (
                session.scalar(select(func.min(Message.created_at))),
                session.scalar(select(func.min(CallbackEvent.received_at))),
                # Rebuilt after a reset: buckets that only pruned rows remember count too.
                session.scalar(
                    select(func.min(Rollup.bucket)).where(Rollup.kind.in_(PRUNED_KINDS))
                ),
            )
            if t
        ]
        start = floor(min(oldest, default=now))
        state = RollupState(name="main", covered_until=start, seen=start)
        session.add(state)
    covered, seen = state.covered_until, state.seen - MARGIN
    dirty = {
        floor(t)
        for (t,) in session.execute(
            select(Message.created_at).where(
                Message.updated_at >= seen, Message.created_at < covered
            )
        )
    }
    dirty |= {
        floor(t)
        for (t,) in session.execute(
            select(CallbackEvent.received_at).where(
                CallbackEvent.received_at >= seen, CallbackEvent.received_at < covered
            )
        )
    }
    end = min(floor(now), covered + MAX_NEW_BUCKETS * BUCKET)
    bucket = covered
    while bucket < end:
        dirty.add(bucket)
        bucket += BUCKET
    for bucket in sorted(dirty):
        _recompute(session, bucket)
    new_covered = max(covered, end)
    for day in sorted({floor(b, DAY) for b in dirty}):
        if day + DAY <= new_covered:
            _sum_day(session, day)
    state.covered_until = new_covered
    state.seen = now
    return max(0, (end - covered) // BUCKET)


class Pruned:
    """What one prune batch deletes, as rollup rows ``(bucket, pruned-kind, key) -> count``
    counted exactly as ``counts`` counts live rows."""

    def __init__(self) -> None:
        self.rows: Counter = Counter()

    def message(self, created_at: datetime, status: str, receipt_seconds: float | None) -> None:
        bucket = floor(created_at)
        self.rows[(bucket, "pruned-status", status)] += 1
        if receipt_seconds is not None:
            self.rows[(bucket, "pruned-receipt", str(receipt_class(receipt_seconds)))] += 1

    def event(self, received_at: datetime, via: str, flags: dict, matched: bool) -> None:
        bucket = floor(received_at)
        if not matched:
            self.rows[(bucket, "pruned-event", "unmatched")] += 1
        if via == "reconcile":
            return  # not a callback: ``counts`` leaves it out too
        keys = ["total"] + (["fallback"] if via == "fallback" else [])
        keys += [key for key in ("duplicate", "late", "unparseable") if flags.get(key)]
        for key in keys:
            self.rows[(bucket, "pruned-event", key)] += 1


def add_pruned(session: Session, pruned: Pruned) -> None:
    """Add a batch's ``Pruned`` counts to the stored ones (the caller holds ``lock``)."""
    if not pruned.rows:
        return
    buckets = {bucket for bucket, _, _ in pruned.rows}
    stored = {
        (bucket, kind, key)
        for bucket, kind, key in session.execute(
            select(Rollup.bucket, Rollup.kind, Rollup.key).where(
                Rollup.bucket.in_(buckets), Rollup.kind.in_(PRUNED_KINDS)
            )
        )
    }
    new = []
    for (bucket, kind, key), n in pruned.rows.items():
        if (bucket, kind, key) in stored:
            session.execute(
                update(Rollup)
                .where(Rollup.bucket == bucket, Rollup.kind == kind, Rollup.key == key)
                .values(count=Rollup.count + n)
            )
        else:
            new.append({"bucket": bucket, "kind": kind, "key": key, "count": n})
    if new:
        session.execute(insert(Rollup), new)


def pruned_unmatched(session: Session, lo: datetime | None) -> int:
    """Unmatched events that retention deleted from the buckets since ``lo``."""
    where = [Rollup.kind == "pruned-event", Rollup.key == "unmatched"]
    where += _range(Rollup.bucket, lo, None)
    return session.scalar(select(func.coalesce(func.sum(Rollup.count), 0)).where(*where)) or 0


def covered_until(session: Session) -> datetime | None:
    state = session.get(RollupState, "main")
    return state.covered_until if state else None


def rolled(session: Session, lo: datetime | None, hi: datetime):
    """Counts from the rollups of the buckets in [lo, hi) (both bucket boundaries): whole days
    from the day sums, the partial days at either end from their 5-minute buckets."""
    first_day = ceil(lo, DAY) if lo is not None else None
    last_day = floor(hi, DAY)
    if first_day is not None and first_day >= last_day:
        spans = [(lo, hi, False)]
    else:
        spans = [(first_day, last_day, True), (last_day, hi, False)]
        if lo is not None:
            spans.append((lo, first_day, False))
    statuses, classes, events = Counter(), Counter(), Counter()
    for start, end, days in spans:
        _add_rolled(session, start, end, days, statuses, classes, events)
    return statuses, classes, events


def _add_rolled(session, lo, hi, days, statuses, classes, events) -> None:
    where = _range(Rollup.bucket, lo, hi)
    where.append(Rollup.kind.in_(DAY_KINDS if days else KINDS))
    for kind, key, n in session.execute(
        select(Rollup.kind, Rollup.key, func.sum(Rollup.count))
        .where(*where)
        .group_by(Rollup.kind, Rollup.key)
    ):
        kind = kind.removeprefix("day-")
        if kind == "status":
            statuses[key] += n
        elif kind == "receipt":
            classes[int(key)] += n
        else:
            events[key] += n


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
