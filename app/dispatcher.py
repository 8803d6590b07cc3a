"""The dispatcher: one active sender (a database lease), claims queued messages oldest first,
paces them, sends up to 50 per carrier request and records every outcome in one commit.

Why nothing is ever sent twice: a message is sent only by the dispatcher whose claim moved it
``queued`` → ``sending`` (an atomic, write-locked UPDATE). Nobody claims ``sending`` or
``unknown`` rows, and a takeover turns a dead holder's ``sending`` rows into ``unknown``
(they may have gone), never back into ``queued``. The lease adds "one active sender", so
pacing is account-wide and a standby does not hammer the database or the carrier.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import messaging, reconcile, rollups
from .catapult import CLIENT_EXTENSION, MAX_BATCH, SendResult, build_client, redact_message
from .extensions import db
from .metrics import SENDS
from .models import Lease, Message, utcnow

log = logging.getLogger(__name__)

LEASE_NAME = "dispatcher"
# A holder renews every iteration (at most MAX_HOLDER_SLEEP apart); a standby polls every
# LEASE_POLL, so it takes over at most LEASE_TTL + LEASE_POLL (6 s) after the holder died.
LEASE_TTL = 5.0
LEASE_POLL = 1.0
MAX_HOLDER_SLEEP = 1.0
RECONCILE_INTERVAL = 5.0  # seconds between two looks for stale messages
ROLLUP_INTERVAL = 5.0  # seconds between two passes over the stats rollups
IDLE_POLL = 0.2  # nothing queued: how soon a newly queued message is picked up
ERROR_PAUSE = 1.0  # after an unexpected error (database down...), before the next iteration
# Retry backoff: exponential from 1 s, capped at 60 s, "equal jitter" (half fixed, half random).
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
# Pacing (GCRA). The carrier averages over 10 s and counts the send being attempted
# (catapult-v1.md "Rate limits"), so the relay must never put more than 10 x MPS sends in any
# 10 s window. GCRA at rate r with tolerance tau allows at most (10 + tau) * r + 1 sends in a
# window; with r = 0.99 x MPS and tau = 50 ms that is <= 10 x MPS (for whole-number MPS) with
# ~50 ms to spare for network jitter, and the long-run rate is 1 % under target (spec: 2 %).
# The tolerance also lets a loop that woke up late (or spent time in a request) catch up.
PACE_HEADROOM = 0.99
PACE_TOLERANCE = 0.05
RATE_LIMIT_PAUSE = 1.0  # carrier said 403 message-rate-limit without saying for how long
# Carrier candidates read per claim when per-number pacing may skip some of them.
CANDIDATE_FACTOR = 4


class Gcra:
    """Generic cell rate algorithm on an injectable clock; rate 0 = unpaced (holds still work)."""

    def __init__(self, rate: float, tolerance: float = PACE_TOLERANCE) -> None:
        self.interval = 1.0 / (rate * PACE_HEADROOM) if rate > 0 else 0.0
        self.tolerance = tolerance
        self.tat: float | None = None  # theoretical arrival time of the next cell
        self.held_until = float("-inf")

    def available(self, now: float, limit: int) -> int:
        """How many sends conform at ``now`` (at most ``limit``)."""
        if now < self.held_until:
            return 0
        if not self.interval:
            return limit
        tat = now if self.tat is None else max(self.tat, now)
        if tat - self.tolerance > now + 1e-9:
            return 0
        # Cell i conforms when tat + i * interval - tolerance <= now.
        return min(limit, int((now + self.tolerance - tat) / self.interval + 1e-9) + 1)

    def take(self, now: float, count: int = 1) -> None:
        """Account for ``count`` sends at ``now``."""
        if self.interval:
            self.tat = (now if self.tat is None else max(self.tat, now)) + count * self.interval

    def wait(self, now: float) -> float:
        """Seconds until one send conforms."""
        ready = self.held_until
        if self.interval and self.tat is not None:
            ready = max(ready, self.tat - self.tolerance)
        return max(0.0, ready - now)

    def hold(self, until: float) -> None:
        """No send before ``until`` (the carrier told us we are over its rate)."""
        self.held_until = max(self.held_until, until)

    def idle(self, now: float) -> bool:
        """True when this bucket behaves exactly like a fresh one (safe to forget)."""
        return now >= self.held_until and (self.tat is None or self.tat <= now)


def callback_url(base: str, path: str, username: str, password: str) -> str:
    """``base + path`` with Basic credentials in the netloc: the documented v1 mechanism for
    authenticating callbacks (catapult-v1.md §3), percent-encoded so any character is safe."""
    parts = urlsplit(base.rstrip("/") + path)
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def default_holder() -> str:
    """A holder id unique to this dispatcher instance (host, pid, random)."""
    return f"{socket.gethostname()[:50]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Dispatcher:
    """Lease, claim, pace, send, record. Call ``run_once`` from one thread at a time."""

    def __init__(
        self,
        app: Flask,
        client: Any = None,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        wall_clock: Callable[[], datetime] = utcnow,
        lease_ttl: float = LEASE_TTL,
        rng: random.Random | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        config = app.config
        with app.app_context():
            self.engine = db.engine
        # Its own client (and connection pool) unless one is given or the app carries a fake.
        self.client = client or app.extensions.get(CLIENT_EXTENSION) or build_client(config)
        self.holder = (holder or default_holder())[:80]
        self.clock = clock
        self.sleep = sleep
        self.wall_clock = wall_clock
        self.lease_ttl = lease_ttl
        self.max_batch = min(max_batch, MAX_BATCH)
        self.rng = rng or random.Random()
        user, password = config["CALLBACK_USERNAME"], config["CALLBACK_PASSWORD"]
        self.callback_url = callback_url(
            config["PUBLIC_BASE_URL"], "/callbacks/catapult", user, password
        )
        self.fallback_url = callback_url(
            config.get("FALLBACK_BASE_URL") or config["PUBLIC_BASE_URL"],
            "/callbacks/catapult/fallback",
            user,
            password,
        )
        self.receipt_requested = config.get("RECEIPT_REQUESTED") or "all"
        self.callback_timeout_ms = int(config.get("CALLBACK_TIMEOUT_MS") or 10000)
        self.account = Gcra(float(config.get("CATAPULT_MPS") or 0))
        self.per_number_rate = float(config.get("CATAPULT_MPS_PER_NUMBER") or 0)
        self.numbers: dict[str, Gcra] = {}
        self.holding = False
        self._dirty = False  # a previous iteration failed between claim and record
        self._last_handled = 0
        self._idle_wait = IDLE_POLL
        self.reconcile_after_s = float(config.get("RECONCILE_AFTER_S") or 900)
        self._next_reconcile = clock()
        self._next_rollup = clock()

    # ------------------------------------------------------------------ loop

    def run_once(self) -> int:
        """One iteration: renew/acquire the lease, claim, send one request, record; returns the
        number of messages handled (0 when not the holder or nothing is ready)."""
        self._last_handled = 0
        now_m, now_w = self.clock(), self.wall_clock()
        with Session(self.engine) as session:
            try:
                batch = self._claim_step(session, now_m, now_w)
                session.commit()
            except BaseException:
                session.rollback()
                raise
        if not self.holding:
            return 0
        if batch:
            # From here until the record commit the rows are ``sending`` and ours: if anything
            # below fails, the next iteration turns them into ``unknown`` (they may have gone).
            self._dirty = True
            results = self._send([payload for _, _, payload in batch])
            self._record(batch, results)
            self._dirty = False
        self.reconcile_stale()
        self.refresh_rollups()
        self._last_handled = len(batch)
        return len(batch)

    def run_forever(self, stop_event: threading.Event) -> None:
        """Loop until ``stop_event`` is set; an in-flight request is finished and recorded."""
        log.info("dispatcher %s started", self.holder)
        try:
            while not stop_event.is_set():
                try:
                    self.run_once()
                    delay = self.next_delay()
                except Exception:
                    log.exception("dispatcher iteration failed")
                    delay = ERROR_PAUSE
                if delay > 0:
                    if self.sleep is not None:
                        self.sleep(delay)
                    else:
                        stop_event.wait(delay)
        finally:
            self.release()
            log.info("dispatcher %s stopped", self.holder)

    def next_delay(self) -> float:
        """How long the loop may sleep before the next iteration."""
        if not self.holding:
            return LEASE_POLL
        if self._last_handled:
            wait = self.account.wait(self.clock())
        else:
            wait = self._idle_wait
        # The holder must renew well inside LEASE_TTL.
        return min(wait, MAX_HOLDER_SLEEP)

    def reconcile_stale(self) -> int:
        """Every RECONCILE_INTERVAL, ask the carrier about messages stuck short of a final
        status (a missed receipt is otherwise lost: the carrier does not resend callbacks)."""
        now_m = self.clock()
        if now_m < self._next_reconcile:
            return 0
        self._next_reconcile = now_m + RECONCILE_INTERVAL
        return reconcile.reconcile_stale(
            self.engine,
            self.client,
            after_s=self.reconcile_after_s,
            default_receipt=self.receipt_requested,
            now=self.wall_clock(),
        )

    def refresh_rollups(self) -> int:
        """Every ROLLUP_INTERVAL, bring the stats rollups up to date (one short transaction)."""
        now_m = self.clock()
        if now_m < self._next_rollup:
            return 0
        self._next_rollup = now_m + ROLLUP_INTERVAL
        with Session(self.engine) as session:
            covered = rollups.refresh(session, now=self.wall_clock())
            session.commit()
        return covered

    def release(self) -> None:
        """Give the lease up (clean stop) so a standby takes over at once."""
        if not self.holding:
            return
        try:
            with Session(self.engine) as session:
                messaging.lock_for_write(session)
                session.execute(
                    update(Lease)
                    .where(Lease.name == LEASE_NAME, Lease.holder == self.holder)
                    .values(expires_at=self.wall_clock() - timedelta(seconds=1))
                    .execution_options(synchronize_session=False)
                )
                session.commit()
        except Exception:
            log.exception("could not release the dispatcher lease")
        self.holding = False

    # ------------------------------------------------------------------ lease

    def _claim_step(self, session: Session, now_m: float, now_w: datetime):
        """The lease and the claim in one write transaction: the lease is checked (renewed)
        immediately before every carrier request, and a holder that lost it claims nothing."""
        lease = session.get(Lease, LEASE_NAME)
        if lease is not None and lease.holder != self.holder and lease.expires_at >= now_w:
            self._lost()
            return []  # a standby reads only: no write lock taken every poll
        messaging.lock_for_write(session)
        if not self._acquire_or_renew(session, now_w):
            self._lost()
            return []
        if self._dirty:
            self._release_own_claims(session, now_w)
        messaging.attach_parked_sweep(session)
        return self._claim(session, now_m, now_w)

    def _acquire_or_renew(self, session: Session, now_w: datetime) -> bool:
        expires = now_w + timedelta(seconds=self.lease_ttl)
        renewed = session.execute(
            update(Lease)
            .where(Lease.name == LEASE_NAME, Lease.holder == self.holder, Lease.expires_at >= now_w)
            .values(expires_at=expires)
            .execution_options(synchronize_session=False)
        ).rowcount
        if renewed and self.holding:
            return True
        if not renewed:
            # Atomic takeover: only one UPDATE can match an expired (or our own) lease.
            taken = session.execute(
                update(Lease)
                .where(
                    Lease.name == LEASE_NAME,
                    or_(Lease.holder == self.holder, Lease.expires_at < now_w),
                )
                .values(holder=self.holder, expires_at=expires, acquired_at=now_w)
                .execution_options(synchronize_session=False)
            ).rowcount
            if not taken:
                if session.get(Lease, LEASE_NAME, populate_existing=True) is not None:
                    return False
                session.add(
                    Lease(
                        name=LEASE_NAME, holder=self.holder, expires_at=expires, acquired_at=now_w
                    )
                )
                try:
                    session.flush()
                except IntegrityError:
                    # Another process inserted the row first (PostgreSQL; SQLite serializes
                    # writers with BEGIN IMMEDIATE): it holds the lease.
                    session.rollback()
                    return False
        # Newly acquired: rows a previous holder left ``sending`` may have reached the carrier.
        released = messaging.release_stale_claims(session, self.holder, now=now_w)
        log.info(
            "dispatcher %s acquired the lease (%d stale claims -> unknown)", self.holder, released
        )
        self.holding = True
        return True

    def _lost(self) -> None:
        if self.holding:
            log.warning("dispatcher %s lost the lease", self.holder)
        self.holding = False

    def _release_own_claims(self, session: Session, now_w: datetime) -> None:
        """Rows still ``sending`` under our name come from a failed iteration (the loop is
        single-threaded): the request may have gone, so ``unknown``, never ``queued``."""
        session.execute(
            update(Message)
            .where(Message.status == "sending", Message.claimed_by == self.holder)
            .values(
                status="unknown",
                claimed_by=None,
                updated_at=now_w,
                error={
                    "category": "unavailable",
                    "code": "dispatcher-error",
                    "message": "The dispatcher failed while sending; outcome unknown.",
                },
            )
            .execution_options(synchronize_session=False)
        )
        self._dirty = False

    # ------------------------------------------------------------------ claim + pace

    def _bucket(self, number: str) -> Gcra:
        bucket = self.numbers.get(number)
        if bucket is None:
            bucket = self.numbers[number] = Gcra(self.per_number_rate)
        return bucket

    def _claim(self, session: Session, now_m: float, now_w: datetime):
        room = self.account.available(now_m, self.max_batch)
        if room == 0:
            self._idle_wait = self.account.wait(now_m)
            return []
        for number in [n for n, b in self.numbers.items() if b.idle(now_m)]:
            del self.numbers[number]  # an idle bucket equals a fresh one: keep the dict small
        # Numbers over their rate are left out of the query so they cannot starve the others.
        blocked = [n for n, b in self.numbers.items() if b.available(now_m, 1) == 0]
        per_number = self.per_number_rate > 0 or bool(self.numbers)
        stmt = (
            select(Message.id, Message.from_number)
            .where(
                Message.status == "queued",
                or_(Message.next_attempt_at.is_(None), Message.next_attempt_at <= now_w),
            )
            .order_by(Message.id)  # relay ids sort by creation: oldest first
            .limit(room * CANDIDATE_FACTOR if per_number else room)
        )
        if blocked:
            stmt = stmt.where(Message.from_number.not_in(blocked))
        if self.engine.dialect.name != "sqlite":
            # PostgreSQL: rows another transaction is claiming are skipped, not waited on.
            stmt = stmt.with_for_update(skip_locked=True)
        picked: list[str] = []
        counts: dict[str, int] = {}
        for message_id, number in session.execute(stmt):
            if len(picked) >= room:
                break
            allowed = self._bucket(number).available(now_m, room) if per_number else room
            if counts.get(number, 0) >= allowed:
                continue  # over its own rate: stays queued, other numbers go on
            counts[number] = counts.get(number, 0) + 1
            picked.append(message_id)
        if not picked:
            waits = [self.numbers[n].wait(now_m) for n in blocked if n in self.numbers]
            self._idle_wait = min([IDLE_POLL, *[w for w in waits if w > 0]])
            return []
        # The WHERE status='queued' makes the claim atomic even without the lock: a row
        # someone else claimed first is simply not updated, and the read-back skips it.
        session.execute(
            update(Message)
            .where(Message.id.in_(picked), Message.status == "queued")
            .values(
                status="sending",
                claimed_by=self.holder,
                attempts=Message.attempts + 1,
                updated_at=now_w,
            )
            .execution_options(synchronize_session=False)
        )
        claimed = session.scalars(
            select(Message)
            .where(
                Message.id.in_(picked),
                Message.claimed_by == self.holder,
                Message.status == "sending",
            )
            .order_by(Message.id)
        ).all()
        batch = []
        for message in claimed:
            self.account.take(now_m)
            if per_number:
                self._bucket(message.from_number).take(now_m)
            batch.append((message.id, message.from_number, self.payload(message)))
        return batch

    def payload(self, message: Message) -> dict[str, Any]:
        """The carrier message object for ``message`` (catapult-v1.md §1)."""
        body: dict[str, Any] = {"from": message.from_number, "to": message.to_number}
        if message.text is not None:
            body["text"] = message.text
        if message.media:
            body["media"] = message.media
        body["callbackUrl"] = self.callback_url
        body["fallbackUrl"] = self.fallback_url
        body["callbackHttpMethod"] = message.callback_http_method or "POST"
        body["callbackTimeout"] = message.callback_timeout or self.callback_timeout_ms
        # Our id, not the user's tag: every event echoes it, so an event that beats the send's
        # response (or follows a timed-out send) still finds its message (catapult-v1.md §3).
        body["tag"] = message.id
        if not message.media:
            # MMS cannot request receipts: media and receiptRequested must not both be sent.
            body["receiptRequested"] = message.receipt_requested or self.receipt_requested
        return body

    # ------------------------------------------------------------------ send + record

    def _send(self, payloads: list[dict[str, Any]]) -> list[SendResult]:
        error = {
            "category": "unavailable",
            "code": "client-error",
            "message": "The carrier client returned no result for this message.",
        }
        try:
            results = list(self.client.send(payloads))
        except Exception as exc:  # a client bug must not lose track: it may have sent them
            log.exception("carrier client failed")
            error = {**error, "message": f"{type(exc).__name__}: {exc}"[:500]}
            results = []
        while len(results) < len(payloads):
            results.append(SendResult("unknown", error=error))
        return results[: len(payloads)]

    def _record(self, batch, results: list[SendResult]) -> None:
        """Every outcome of one carrier request in one commit (messaging never commits)."""
        now_w = self.wall_clock()
        ids = [message_id for message_id, _, _ in batch]
        with Session(self.engine) as session:
            try:
                messaging.lock_for_write(session)
                stmt = select(Message).where(Message.id.in_(ids))
                if self.engine.dialect.name != "sqlite":
                    stmt = stmt.with_for_update()
                rows = {m.id: m for m in session.scalars(stmt)}
                for (message_id, number, payload), result in zip(batch, results, strict=True):
                    message = rows.get(message_id)
                    if message is None:
                        continue
                    self._record_one(session, message, number, payload, result, now_w)
                session.commit()
            except BaseException:
                session.rollback()
                raise
        for result in results:
            SENDS.labels(outcome=result.kind).inc()

    def _record_one(self, session, message, number, payload, result, now_w) -> None:
        # Stored for the timeline: the callback credentials never reach the database.
        request = redact_message(result.request or payload)
        response = result.response
        if result.kind == "accepted":
            messaging.record_accepted(
                session, message, result.carrier_id, request, response, now=now_w
            )
        elif result.kind == "rejected":
            messaging.record_rejected(session, message, result.error, request, response, now=now_w)
        elif result.kind == "retry":
            delay = self.retry_delay(message.attempts, result.retry_after)
            messaging.record_retry(
                session,
                message,
                now_w + timedelta(seconds=delay),
                result.error,
                request,
                response,
                now=now_w,
            )
            self._pause_for_rate_limit(number, result)
        else:
            messaging.record_unknown(session, message, result.error, request, response, now=now_w)

    def retry_delay(self, attempts: int, retry_after: float | None) -> float:
        """Seconds before a retry: exponential backoff with jitter, at least ``retry_after``."""
        step = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(attempts - 1, 0))
        delay = step / 2 + self.rng.uniform(0, step / 2)
        return max(delay, retry_after or 0.0)

    def _pause_for_rate_limit(self, number: str, result: SendResult) -> None:
        """The carrier says we are over its rate: pause that number (per-TN limit) or the whole
        account, so the rest of the queue does not run into the same 403."""
        error = result.error or {}
        code = str(error.get("code") or "")
        status = (result.response or {}).get("status")
        if not (code.startswith("message-rate-limit") or status == 429):
            return
        until = self.clock() + (result.retry_after or RATE_LIMIT_PAUSE)
        if code == "message-rate-limit-per-tn":
            self._bucket(number).hold(until)
        else:
            self.account.hold(until)


# ---------------------------------------------------------------------- inline + CLI


class InlineDispatcher:
    """A dispatcher thread in a serving process, started lazily on its first request so that
    no thread exists before gunicorn forks its workers (threads do not survive a fork)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._pid: int | None = None
        self.thread: threading.Thread | None = None
        self.stop_event = threading.Event()
        self.dispatcher: Dispatcher | None = None

    def ensure_started(self) -> None:
        """``before_request`` hook: start this process's thread once (cheap after that)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A fresh state per process: after a fork the parent's thread does not exist here.
            self.stop_event = threading.Event()
            self.dispatcher = Dispatcher(self.app)
            self.thread = threading.Thread(
                target=self.dispatcher.run_forever,
                args=(self.stop_event,),
                name="relay-dispatcher",
                daemon=True,
            )
            self.thread.start()
            self._pid = os.getpid()
            atexit.register(self.stop)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread: it finishes (and records) an in-flight request, then lets go of
        the lease so a standby takes over at once."""
        self.stop_event.set()
        if self.thread is not None and self._pid == os.getpid():
            self.thread.join(timeout)


def _serving_process() -> bool:
    """True in a gunicorn worker or under ``flask run``; False in other CLI commands."""
    if os.environ.get("FLASK_RUN_FROM_CLI"):
        from . import _cli_command  # the same argv parsing the factory uses

        return _cli_command() == "run"
    if os.environ.get("WERKZEUG_RUN_MAIN"):
        return True
    return "gunicorn" in sys.modules or "gunicorn" in os.environ.get("SERVER_SOFTWARE", "")


def start_inline_dispatcher(app: Flask) -> InlineDispatcher | None:
    """With ``DISPATCH=inline``, run a dispatcher thread in each serving process (the lease
    keeps one active); never under TESTING and never in CLI commands such as ``db upgrade``."""
    if app.config.get("TESTING") or app.config.get("DISPATCH") != "inline":
        return None
    if not _serving_process():
        return None
    inline = InlineDispatcher(app)
    app.before_request(inline.ensure_started)
    app.extensions["relay_inline_dispatcher"] = inline
    return inline


@click.command("dispatch")
@click.option("--once", is_flag=True, help="Run a single iteration and exit.")
@with_appcontext
def dispatch_command(once: bool) -> None:
    """Run the dispatcher in the foreground (the worker role) until SIGTERM or SIGINT."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    dispatcher = Dispatcher(app)
    if once:
        handled = dispatcher.run_once()
        dispatcher.release()
        click.echo(f"handled {handled}")
        return
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now, even mid-request
        click.echo(f"{signal.Signals(signum).name}: finishing the current batch", err=True)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    click.echo(f"dispatcher {dispatcher.holder}: running (Ctrl-C to stop)", err=True)
    try:
        dispatcher.run_forever(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
