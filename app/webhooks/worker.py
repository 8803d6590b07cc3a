"""The delivery worker: claim due notifications, attempt them, record each outcome.

Every worker process runs one (the worker role, and web processes under ``DISPATCH=inline``):
no lease, no global lock. A claim is one short write transaction that marks due rows as
this worker's until ``claimed_until`` (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so two workers
never wait for or take the same row; SQLite: the database write lock, taken only when a
lock-free look found something due). The attempts run on a few threads of the worker with no
transaction open; each outcome is recorded in a short transaction of its own. A worker that
dies leaves its claims to expire: they are attempted again (at least once, never lost).

Order: a delivery is claimable only while no earlier delivery of the same message to the
same endpoint is pending, so a later change waits until the earlier one succeeded or failed
for good; other messages' deliveries never wait for it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased

from ..db_setup import lock_for_write
from ..lease import default_holder
from ..metrics import WEBHOOK_ATTEMPTS
from ..models import utcnow
from . import delivery
from .models import WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

THREADS = 4  # attempts in flight per worker process
CLAIM_S = 60.0  # a claim outlives the longest attempt (15 s) with room for recording it
IDLE_POLL = 0.5  # seconds between looks while nothing is due
ERROR_PAUSE = 2.0
ATTEMPT_LOG = 20  # attempts kept per delivery (replays add more)

Delivery = WebhookDelivery
W = WebhookEndpoint
_earlier = aliased(WebhookDelivery)


@dataclass(slots=True)
class Claimed:
    id: int
    uid: str
    body: str
    url: str
    secret: str


def due(now: datetime, first_delay: float):
    """Pending, due, not claimed by a live worker, and first in line for its message and
    endpoint (the ordering rule); the endpoint enabled."""
    first = now - timedelta(seconds=first_delay)
    when = (
        Delivery.next_attempt_at <= now
        if not first_delay
        else or_(
            and_(Delivery.step > 0, Delivery.next_attempt_at <= now),
            and_(Delivery.step == 0, Delivery.next_attempt_at <= first),
        )
    )
    return (
        Delivery.status == "pending",
        when,
        or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now),
        WebhookEndpoint.enabled.is_(True),
        ~exists().where(
            _earlier.message_id == Delivery.message_id,
            _earlier.endpoint_id == Delivery.endpoint_id,
            _earlier.id < Delivery.id,
            _earlier.status == "pending",
        ),
    )


def claim(engine: Engine, holder: str, limit: int, schedule, now=None) -> list[Claimed]:
    """Up to ``limit`` due deliveries, claimed for ``holder`` (committed on return)."""
    now = now or utcnow()
    stmt = (
        select(Delivery.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == Delivery.endpoint_id)
        .where(*due(now, schedule[0]))
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
    )
    sqlite = engine.dialect.name == "sqlite"
    with Session(engine) as session:
        if sqlite and not session.execute(stmt).first():
            return []  # nothing due: no write lock taken
        lock_for_write(session)
        if not sqlite:
            stmt = stmt.with_for_update(skip_locked=True, of=Delivery)
        ids = list(session.scalars(stmt))
        if not ids:
            return []
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(claimed_by=holder, claimed_until=now + timedelta(seconds=CLAIM_S))
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(
            select(Delivery.id, Delivery.uid, Delivery.body, W.url, W.secret)
            .join(WebhookEndpoint, WebhookEndpoint.id == Delivery.endpoint_id)
            .where(Delivery.id.in_(ids))
            .order_by(Delivery.id)
        ).all()
        session.commit()
    return [Claimed(*row) for row in rows]


def record(engine: Engine, holder: str, results, schedule, now=None) -> None:
    """The outcomes of attempts (``(Claimed, Outcome)`` pairs), in one short transaction."""
    now = now or utcnow()
    with Session(engine) as session:
        lock_for_write(session)
        for claimed, outcome in results:
            stmt = select(Delivery).where(Delivery.id == claimed.id)
            if engine.dialect.name != "sqlite":
                stmt = stmt.with_for_update()
            row = session.scalar(stmt)
            if row is None:
                continue  # its endpoint was deleted meanwhile
            WEBHOOK_ATTEMPTS.labels(apply_outcome(row, holder, outcome, schedule, now)).inc()
        session.commit()


def apply_outcome(row: Delivery, holder: str, outcome: delivery.Outcome, schedule, now) -> str:
    """Log the attempt on ``row`` and move it on: succeeded, retried later, or failed for good
    when the schedule has run out. Returns the outcome's name (the metric's label)."""
    entry = {
        "at": now.isoformat(),
        "statusCode": outcome.status_code,
        "error": outcome.error,
        "latencyMs": outcome.latency_ms,
        "nextAttemptAt": None,
    }
    row.attempts += 1
    row.last_attempt_at, row.last_status_code = now, outcome.status_code
    row.last_error = outcome.error
    mine = row.status == "pending" and row.claimed_by == holder
    name = "succeeded" if outcome.ok else "retry"
    if mine:  # (else replayed or reclaimed meanwhile: logged, the row is someone else's now)
        row.step += 1
        row.claimed_by = row.claimed_until = None
        if outcome.ok:
            row.status, row.finished_at, row.next_attempt_at = "succeeded", now, None
        elif row.step < len(schedule):
            row.next_attempt_at = now + timedelta(seconds=schedule[row.step])
            entry["nextAttemptAt"] = row.next_attempt_at.isoformat()
        else:
            row.status, row.finished_at, row.next_attempt_at = "failed", now, None
            name = "failed"
    row.attempt_log = [*(row.attempt_log or [])[-(ATTEMPT_LOG - 1) :], entry]
    return name


def queue_depth(engine: Engine, now=None) -> tuple[int, float]:
    """Pending deliveries, and the seconds since the oldest one's change (0 when none)."""
    with Session(engine) as session:
        count, oldest = session.execute(
            select(func.count(), func.min(Delivery.occurred_at)).where(Delivery.status == "pending")
        ).one()
    if not count or oldest is None:
        return 0, 0.0
    return count, max(0.0, ((now or utcnow()) - oldest).total_seconds())


class WebhookWorker:
    """Claims and attempts deliveries on ``threads`` threads until ``stop`` is set."""

    def __init__(self, engine: Engine, config, holder: str | None = None, threads: int = THREADS):
        self.engine = engine
        self.schedule = tuple(config["WEBHOOK_RETRY_SCHEDULE"])
        self.allow_private = bool(config["WEBHOOK_ALLOW_PRIVATE"])
        self.holder = (holder or default_holder())[:80]
        self.threads = threads
        # 15 s is the contract (DESIGN.md); tests shorten it through the app config only.
        self.timeout = float(config.get("WEBHOOK_TIMEOUT_S") or delivery.TIMEOUT_S)

    def _attempt(self, claimed: Claimed) -> delivery.Outcome:
        return delivery.attempt(
            claimed.url, claimed.secret, claimed.uid, claimed.body, self.allow_private, self.timeout
        )

    def run_forever(self, stop: threading.Event, poll: float = IDLE_POLL) -> None:
        """Keep ``threads`` attempts in flight while deliveries are due; on ``stop``, finish
        and record the attempts in flight, then return."""
        log.info("webhook worker %s started", self.holder)
        flight: dict[Future, Claimed] = {}
        with ThreadPoolExecutor(self.threads, thread_name_prefix="relay-webhook") as pool:
            while not stop.is_set() or flight:
                try:
                    if not stop.is_set() and len(flight) < self.threads:
                        free = self.threads - len(flight)
                        for item in claim(self.engine, self.holder, free, self.schedule):
                            flight[pool.submit(self._attempt, item)] = item
                    done, _ = wait(list(flight), timeout=poll, return_when=FIRST_COMPLETED)
                    if not flight:
                        stop.wait(poll)
                    if done:
                        results = [(flight.pop(f), f.result()) for f in done]
                        record(self.engine, self.holder, results, self.schedule)
                except Exception:
                    # The database is down, most likely: claims expire, nothing is lost (the
                    # attempts whose outcome could not be recorded are made again).
                    log.exception("webhook worker %s: iteration failed", self.holder)
                    for future in [f for f in flight if f.done()]:
                        flight.pop(future)
                    stop.wait(ERROR_PAUSE)
        log.info("webhook worker %s stopped", self.holder)


class WorkerThread:
    """A ``WebhookWorker`` on a thread of its own, bounded and stoppable."""

    def __init__(self, engine: Engine, config, **kwargs) -> None:
        self.worker = WebhookWorker(engine, config, **kwargs)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=self.worker.run_forever, args=(self.stop_event,), name="relay-webhooks"
        )
        self.thread.daemon = True

    def start(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
