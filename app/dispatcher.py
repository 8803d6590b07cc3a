"""The dispatcher: the one active sender (``lease.py``) claims queued messages oldest first,
paces them (``pacing.py``), sends up to 50 per carrier request and records every outcome in
one commit. Between sends the lease holder does its housekeeping (``housekeeping.py``): stale
messages, the stats rollups, retention.

Why nothing is ever sent twice: a message is sent only by the dispatcher whose claim moved it
``queued`` → ``sending`` (an atomic, write-locked UPDATE). Nobody claims ``sending`` or
``unknown`` rows, and a takeover turns a dead holder's ``sending`` rows into ``unknown``
(they may have gone), never back into ``queued``. The lease adds "one active sender", so
pacing is account-wide and a standby does not hammer the database or the carrier.

Times: every time the dispatcher writes or compares (claims, retry times, records, the
reconciler's and the rollups' "now") is on the database's clock, as this host's wall clock
plus the offset measured at each lease step, so a host without NTP does not skew them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from flask import Flask
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from . import messaging
from .catapult import CLIENT_EXTENSION, MAX_BATCH, SendResult, build_client, redact_message
from .errors import database_unavailable
from .extensions import db
from .housekeeping import Housekeeping
from .lease import LEASE_POLL, LEASE_TTL, DbLease, default_holder
from .logs import mask_number
from .metrics import CARRIER_REQUEST_SECONDS, DISPATCHER_ACTIVE, LEASE_ACQUIRED, SENDS
from .models import Message, utcnow
from .pacing import RATE_LIMIT_PAUSE, Pacer
from .webhooks.outbox import subscriptions

log = logging.getLogger(__name__)

MAX_HOLDER_SLEEP = 1.0  # the holder must renew well inside LEASE_TTL
IDLE_POLL = 0.2  # nothing queued: how soon a newly queued message is picked up
ERROR_PAUSE = 1.0  # after an unexpected error (database down...), before the next iteration
# Retry backoff: exponential from 1 s, capped at 60 s, "equal jitter" (half fixed, half random).
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
# Carrier candidates read per claim when per-number pacing may skip some of them.
CANDIDATE_FACTOR = 4


def callback_url(base: str, path: str, username: str, password: str) -> str:
    """``base + path`` with Basic credentials in the netloc: the documented v1 mechanism for
    authenticating callbacks (catapult-v1.md §3), percent-encoded so any character is safe."""
    parts = urlsplit(base.rstrip("/") + path)
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


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
        self.lease = DbLease(self.holder, self.engine.dialect.name, lease_ttl)
        self.clock = clock
        self.sleep = sleep
        self.wall_clock = wall_clock  # this host's clock: only ever used with db_offset
        self.db_offset = timedelta(0)  # the database's clock minus wall_clock, at the last look
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
        self.pacer = Pacer(
            float(config.get("CATAPULT_MPS") or 0),
            float(config.get("CATAPULT_MPS_PER_NUMBER") or 0),
        )
        self.holding = False
        self._dirty = False  # a previous iteration failed between claim and record
        self._unrecorded: tuple | None = None  # (batch, carrier results) not recorded yet
        self._last_handled = 0
        self._idle_wait = IDLE_POLL
        self.housekeeping = Housekeeping(
            self.engine, self.client, config, clock, default_receipt=self.receipt_requested
        )

    def db_time(self) -> datetime:
        """Now on the database's clock (this host's clock corrected by the measured offset)."""
        return self.wall_clock() + self.db_offset

    # ------------------------------------------------------------------ loop

    def run_once(self) -> int:
        """One iteration: renew/acquire the lease, claim, send one request, record; returns the
        number of messages handled (0 when not the holder or nothing is ready)."""
        self._last_handled = 0
        if self._unrecorded is not None:
            # The carrier answered a request whose outcome the database could not take: record
            # it before anything else (raises again while the database stays down).
            self._record(*self._unrecorded)
            self._unrecorded = None
            self._dirty = False
        now_m = self.clock()
        with Session(self.engine) as session:
            try:
                batch = self._claim_step(session, now_m)
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
            started = time.monotonic()
            results = self._send([payload for _, _, payload in batch])
            carrier_s = time.monotonic() - started
            CARRIER_REQUEST_SECONDS.observe(carrier_s)
            try:
                self._record(batch, results)
            except Exception as exc:
                if database_unavailable(exc):
                    # Kept until the database answers again: these messages went (or were
                    # refused), and what the carrier said must not be lost to an outage.
                    self._unrecorded = (batch, results)
                raise
            self._dirty = False
            self._log_batch(batch, results, carrier_s)
        self.housekeeping.run(self.db_time())
        self._last_handled = len(batch)
        return len(batch)

    def _log_batch(self, batch, results: list[SendResult], carrier_s: float) -> None:
        """The batch's line: how many, what became of them, how long the carrier took; the
        sending numbers masked (they are someone's)."""
        outcomes: dict[str, int] = {}
        for result in results:
            outcomes[result.kind] = outcomes.get(result.kind, 0) + 1
        log.info(
            "dispatch batch",
            extra={
                "holder": self.holder,
                "size": len(batch),
                "outcomes": outcomes,
                "carrier_ms": round(carrier_s * 1000, 1),
                "from_numbers": sorted({mask_number(number) for _, number, _ in batch}),
                "first_id": batch[0][0],
            },
        )

    def run_forever(self, stop_event: threading.Event) -> None:
        """Loop until ``stop_event`` is set; an in-flight request is finished and recorded."""
        log.info("dispatcher %s started", self.holder)
        paused = False
        try:
            while not stop_event.is_set():
                try:
                    self.run_once()
                    delay = self.next_delay()
                    if paused:
                        log.warning("dispatcher %s: the database answers again", self.holder)
                        paused = False
                except Exception as exc:
                    if not database_unavailable(exc):
                        log.exception("dispatcher iteration failed")
                    elif not paused:
                        # Sending, reconciling and the rollups all wait for the database;
                        # they resume by themselves when it is back.
                        log.warning(
                            "dispatcher %s paused: database unavailable (%s)", self.holder, exc
                        )
                        paused = True
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
            wait = self.pacer.account.wait(self.clock())
        else:
            wait = self._idle_wait
        # The holder must renew well inside LEASE_TTL.
        return min(wait, MAX_HOLDER_SLEEP)

    def release(self) -> None:
        """Give the lease up (clean stop) so a standby takes over at once."""
        if not self.holding:
            return
        try:
            with Session(self.engine) as session:
                messaging.lock_for_write(session)
                self.lease.release(session)
                session.commit()
        except Exception:
            log.exception("could not release the dispatcher lease")
        self.holding = False
        DISPATCHER_ACTIVE.set(0)

    # ------------------------------------------------------------------ lease

    def _claim_step(self, session: Session, now_m: float):
        """The lease and the claim in one write transaction: the lease is checked (renewed)
        immediately before every carrier request, and a holder that lost it claims nothing."""
        db_now, live_holder = self.lease.peek(session)
        self.db_offset = db_now - self.wall_clock()
        if live_holder is not None and live_holder != self.holder:
            self._lost()
            return []  # a standby reads only: no write lock taken every poll
        messaging.lock_for_write(session)
        held = self.lease.hold(session)
        if held is None:
            self._lost()
            return []
        if held == "acquired" or not self.holding:
            # Newly acquired: rows a previous holder left ``sending`` may have reached the
            # carrier.
            released = messaging.release_stale_claims(session, self.holder, now=db_now)
            log.info(
                "dispatcher %s acquired the lease (%d stale claims -> unknown)",
                self.holder,
                released,
            )
            self.holding = True
            LEASE_ACQUIRED.inc()
            DISPATCHER_ACTIVE.set(1)
        if self._dirty:
            self._release_own_claims(session, db_now)
        messaging.attach_parked_sweep(session)
        return self._claim(session, now_m, db_now)

    def _lost(self) -> None:
        if self.holding:
            log.warning("dispatcher %s lost the lease", self.holder)
            DISPATCHER_ACTIVE.set(0)
        self.holding = False

    def _release_own_claims(self, session: Session, now_w: datetime) -> None:
        """Rows still ``sending`` under our name come from a failed iteration (the loop is
        single-threaded): the request may have gone, so ``unknown``, never ``queued``."""
        error = {
            "category": "unavailable",
            "code": "dispatcher-error",
            "message": "The dispatcher failed while sending; outcome unknown.",
        }
        messaging.release_claims(session, Message.claimed_by == self.holder, error, now_w)
        self._dirty = False

    # ------------------------------------------------------------------ claim + pace

    def _claim(self, session: Session, now_m: float, now_w: datetime):
        pacer = self.pacer
        room = pacer.account.available(now_m, self.max_batch)
        if room == 0:
            self._idle_wait = pacer.account.wait(now_m)
            return []
        # Numbers over their rate are left out of the query so they cannot starve the others.
        blocked = pacer.blocked(now_m)
        per_number = pacer.per_number
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
            if counts.get(number, 0) >= pacer.allowed(number, now_m, room):
                continue  # over its own rate: stays queued, other numbers go on
            counts[number] = counts.get(number, 0) + 1
            picked.append(message_id)
        if not picked:
            waits = pacer.wait_blocked(blocked, now_m)
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
            pacer.take(message.from_number, now_m)
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
        now_w = self.db_time()
        ids = [message_id for message_id, _, _ in batch]
        with Session(self.engine) as session:
            try:
                messaging.lock_for_write(session)
                subscriptions(session)  # before the row locks (``webhooks.outbox``)
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
        """The carrier says we are over its rate (403 message-rate-limit, or a 429)."""
        error = result.error or {}
        code = str(error.get("code") or "")
        status = (result.response or {}).get("status")
        if not (code.startswith("message-rate-limit") or status == 429):
            return
        until = self.clock() + (result.retry_after or RATE_LIMIT_PAUSE)
        self.pacer.hold_for_rate_limit(number, code, until)
