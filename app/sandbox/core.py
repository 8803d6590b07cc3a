"""The sandbox itself: accepts sends, plays each message's planned events, keeps the truth."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

from .callbacks import OrderedScheduler
from .events import garble, iso_time, message_payload
from .options import SandboxOptions
from .ratelimit import RateLimiter, ReadLimiter
from .scenarios import PlannedEvent, plan_message
from .segments import segment_count
from .store import CallbackLog, MessageStore, StoredMessage, new_message_id
from .transport import AttemptResult, CallbackTransport, redact
from .validation import SendRequest

SIMULATED_OUTAGE = "simulated outage: primary treated as unreachable and not contacted"


class Sandbox:
    """Store, rate limiter, scenario planner and callback sender of one sandbox app."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.store = MessageStore()
        self.log = CallbackLog()
        self.limiter = RateLimiter(options.mps, options.mps_per_number)
        self.read_limiter = ReadLimiter(options.reads_per_second)
        self.transport = CallbackTransport()
        self.scheduler = OrderedScheduler(options.workers)
        self._generation = 0  # bumped by reset: jobs of an older generation do nothing

    # -- sending -------------------------------------------------------------------------

    def message_uri(self, base: str, message_id: str, user_id: str | None = None) -> str:
        """Absolute message URL (Java/C# SDKs need an absolute Location)."""
        return f"{base}/v1/users/{user_id or self.options.user_id}/messages/{message_id}"

    def create(
        self, request: SendRequest, base: str
    ) -> tuple[StoredMessage, list[threading.Event]]:
        """Store an accepted message and schedule its events; returns the early events' flags."""
        ordinal = self.store.next_ordinal()
        generation = self._generation
        # One RNG per message ordinal: decisions repeat for the same seed and send order,
        # whatever the interleaving of concurrent requests' other work.
        rng = random.Random(f"{self.options.seed}:{ordinal}")
        plan = plan_message(
            self.options.knobs, rng, mms=request.is_mms, receipt=request.receipt_requested
        )
        message = StoredMessage(
            id=new_message_id(),
            user_id=self.options.user_id,
            direction="out",
            from_=request.from_,
            to=request.to,
            text=request.text,
            media=request.media,
            time=datetime.now(UTC),
            segment_count=segment_count(request.text, mms=request.is_mms),
            receipt_requested=request.receipt_requested,
            callback_url=request.callback_url,
            callback_http_method=request.callback_http_method,
            callback_timeout=request.callback_timeout,
            fallback_url=request.fallback_url,
            tag=request.tag,
            ordinal=ordinal,
            events_planned=len(plan.events),
            plan=plan.summary(),
        )
        self.store.add(message)
        start = time.monotonic()
        early: list[threading.Event] = []
        for event in plan.events:
            done = threading.Event() if event.early else None
            self.scheduler.schedule(
                message.id,
                start + event.offset_ms / 1000.0,
                lambda e=event: self._play(generation, message, e, base),
                done,
            )
            if done is not None:
                early.append(done)
        return message, early

    def wait_early(self, flags: list[threading.Event]) -> None:
        """Hold the send response until its early events were attempted (bounded).

        catapult-v1.md 3: events can arrive before the send's 201 has been processed; the
        hostile scenario makes that happen for sure by answering only afterwards.
        """
        deadline = time.monotonic() + self.options.early_wait_ms / 1000.0
        for flag in flags:
            flag.wait(max(0.0, deadline - time.monotonic()))

    # -- events ------------------------------------------------------------------------------

    def _play(
        self, generation: int, message: StoredMessage, event: PlannedEvent, base: str
    ) -> None:
        """Generate one event: update the truth, then deliver it when there is a callbackUrl."""
        if generation != self._generation:
            return
        subject = message
        if event.kind == "inbound":
            subject = self._receive_reply(message, event)
            self.store.note_generated(message.id)
        else:
            self.store.apply(message.id, event.seq, event.truth)
        if not message.callback_url:
            return  # no callbackUrl: nothing is sent, the state still evolves
        payload = message_payload(
            subject, self.message_uri(base, subject.id, subject.user_id), event.truth
        )
        if event.garbage is not None:
            payload = garble(payload, *event.garbage)
        self._deliver(generation, message, subject.id, event, payload)

    def _receive_reply(self, parent: StoredMessage, event: PlannedEvent) -> StoredMessage:
        """An inbound reply: from the original ``to``, to the original ``from``, a fresh id."""
        reply = StoredMessage(
            id=new_message_id(),
            user_id=parent.user_id,
            direction="in",
            from_=parent.to,
            to=parent.from_,
            text=event.inbound_text,
            media=(),
            time=datetime.now(UTC),
            segment_count=segment_count(event.inbound_text),
            state="received",
            parent_id=parent.id,
            events_planned=1,
            events_generated=1,
            applied_seq=1,
        )
        return self.store.add(reply)

    def _deliver(
        self,
        generation: int,
        message: StoredMessage,
        subject_id: str,
        event: PlannedEvent,
        payload: dict[str, Any],
    ) -> None:
        """One attempt to callbackUrl, one to fallbackUrl if that failed, then drop the event."""
        assert message.callback_url is not None
        method = message.callback_http_method or "POST"
        timeout_ms = message.callback_timeout or 10000
        entry = {
            "dispatchId": self.log.next_dispatch(),  # shared by the primary and fallback tries
            "eventSeq": event.seq,
            "messageId": subject_id,
            "kind": event.kind,
            "method": method,
            "duplicate": event.duplicate,
            "early": event.early,
            "payload": payload,
        }
        if event.outage:
            result = AttemptResult(
                ok=False, status_code=None, error=SIMULATED_OUTAGE, latency_ms=0.0
            )
        else:
            result = self.transport.attempt(message.callback_url, method, payload, timeout_ms)
        fallback = message.fallback_url
        outcome = "delivered" if result.ok else ("fell-back" if fallback else "dropped")
        self._record(
            generation,
            entry,
            "primary",
            message.callback_url,
            result,
            outcome,
            simulated=event.outage,
        )
        if result.ok or not fallback:
            return
        second = self.transport.attempt(fallback, method, payload, timeout_ms)
        outcome = "delivered" if second.ok else "dropped"
        self._record(generation, entry, "fallback", fallback, second, outcome, simulated=False)

    def _record(
        self,
        generation: int,
        entry: dict[str, Any],
        via: str,
        url: str,
        result: AttemptResult,
        outcome: str,
        *,
        simulated: bool,
    ) -> None:
        """Append one attempt to the introspection log (unless a reset came in between)."""
        if generation != self._generation:
            return
        self.log.append(
            {
                **entry,
                "url": redact(url),
                "via": via,
                "statusCode": result.status_code,
                "error": result.error,
                "latencyMs": round(result.latency_ms, 1),
                "outcome": outcome,
                "simulatedOutage": simulated,
                "at": iso_time(datetime.now(UTC)),
            }
        )

    # -- lifecycle -----------------------------------------------------------------------

    def status(self) -> dict[str, int | bool]:
        """Whether every scheduled event has been generated and attempted."""
        return self.scheduler.status()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until idle; True when idle within ``timeout`` seconds."""
        return self.scheduler.wait_idle(timeout)

    def reset(self) -> int:
        """Forget messages, attempts, rate windows and queued events; seeded decisions restart."""
        self._generation += 1
        cancelled = self.scheduler.cancel_all()
        self.store.reset()
        self.log.reset()
        self.limiter.reset()
        self.read_limiter.reset()
        return cancelled

    def close(self, timeout: float = 15.0) -> None:
        """Stop the callback threads and close their HTTP sessions."""
        self.scheduler.stop(timeout)
        self.transport.close()
