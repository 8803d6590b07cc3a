"""Scenarios: seeded decisions about each message's events, timing and mischief."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .events import ERROR_CODES, NOT_DELIVERED_CODES, status_truth


@dataclass(frozen=True)
class Knobs:
    """Shares are probabilities (0..1) drawn per message or per event; delays in ms."""

    failure_share: float = 0.0  # not delivered: a receipt with a non-zero deliveryCode
    error_share: float = 0.0  # the send itself fails: state "error"
    delay_min_ms: float = 10.0  # gap before each event (uniform between min and max)
    delay_max_ms: float = 50.0
    duplicate_share: float = 0.0  # an event is sent a second time
    reorder_share: float = 0.0  # the last two events of a message swap send order
    early_share: float = 0.0  # the first event goes out before the send response
    primary_outage_share: float = 0.0  # the primary attempt of an event is treated as failed
    inbound_share: float = 0.0  # an inbound reply follows the message
    garbage_share: float = 0.0  # odd unicode / string codes / unknown fields in an event
    slow_share: float = 0.0  # a receipt is held back by slow_delay_ms more
    slow_delay_ms: float = 5000.0

    def validate(self) -> Knobs:
        """Raise ValueError on an impossible combination."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError(f"{f.name} must not be negative")
            if f.name.endswith("_share") and value > 1:
                raise ValueError(f"{f.name} must be between 0 and 1")
        if self.delay_min_ms > self.delay_max_ms:
            raise ValueError("delay_min_ms must not exceed delay_max_ms")
        if self.failure_share + self.error_share > 1:
            raise ValueError("failure_share + error_share must not exceed 1")
        return self

    def to_dict(self) -> dict[str, float]:
        """Plain values for introspection."""
        return asdict(self)


KNOB_NAMES = tuple(f.name for f in fields(Knobs))

SCENARIOS: dict[str, Knobs] = {
    # Everything delivered, in order, once, quickly.
    "perfect": Knobs(),
    # A share not delivered, receipts after a few hundred ms to a couple of seconds,
    # occasional send errors and some inbound replies.
    "realistic": Knobs(
        failure_share=0.10,
        error_share=0.02,
        delay_min_ms=200,
        delay_max_ms=2000,
        inbound_share=0.05,
    ),
    # Everything catapult-v1.md section 3 allows: duplicates, any order, events before the
    # send response, primary outages, slow receipts, garbage in optional fields.
    "hostile": Knobs(
        failure_share=0.15,
        error_share=0.05,
        delay_min_ms=0,
        delay_max_ms=1500,
        duplicate_share=0.2,
        reorder_share=0.25,
        early_share=0.25,
        primary_outage_share=0.2,
        inbound_share=0.1,
        garbage_share=0.25,
        slow_share=0.1,
        slow_delay_ms=5000,
    ),
}

ODD_DESCRIPTIONS = (
    "Délivré au transporteur \u2713 \U0001f4e8",
    "\u202eredrac ot dereviled\u202c egasseM",
    "Message\u200b\u200bdelivered\ufeff to carrier \u0301\u0301",
    "𝔐𝔢𝔰𝔰𝔞𝔤𝔢 𝔡𝔢𝔩𝔦𝔳𝔢𝔯𝔢𝔡 \U0001f9e8",
    "配信済み / 已送达 / доставлено",
)
EXTRA_FIELDS = (
    {"carrierName": "Sandbox Mobile \u2122"},
    {"errorCode": None, "x-sandbox-trace": {"hops": [1, 2, {"n": None}]}},
    {"priority": "normal", "expiration": "2099-01-01T00:00:00Z"},
)
INBOUND_TEXTS = ("Thanks!", "Who is this?", "\U0001f44d got it", "Call me later", "ok")


@dataclass
class PlannedEvent:
    """One send of one event; ``seq`` is its logical position in the message's sequence."""

    seq: int
    offset_ms: float
    truth: dict[str, Any]
    kind: str = "status"  # "status" (the message's own event) or "inbound" (a reply)
    duplicate: bool = False
    early: bool = False
    outage: bool = False
    garbage: tuple[str, dict[str, Any]] | None = None
    inbound_text: str | None = None

    def summary(self) -> dict[str, Any]:
        """Introspection view of the decision."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "offsetMs": round(self.offset_ms, 3),
            **self.truth,
            "duplicate": self.duplicate,
            "early": self.early,
            "outage": self.outage,
            "garbage": self.garbage is not None,
        }


@dataclass
class Plan:
    """A message's fate: the outcome and its events in send order."""

    outcome: str
    events: list[PlannedEvent] = field(default_factory=list)

    @property
    def reordered(self) -> bool:
        """Whether a later logical event is sent before an earlier one."""
        seqs = [e.seq for e in self.events if e.kind == "status" and not e.duplicate]
        return seqs != sorted(seqs)

    def summary(self) -> dict[str, Any]:
        """Introspection view of the plan."""
        return {
            "outcome": self.outcome,
            "reordered": self.reordered,
            "events": [e.summary() for e in self.events],
        }


def resolve_knobs(scenario: str, overrides: dict[str, Any]) -> Knobs:
    """The scenario's knobs with the given ones replaced."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    given = {k: float(v) for k, v in overrides.items() if v is not None}
    return replace(SCENARIOS[scenario], **given).validate()


def logical_events(
    outcome: str, *, mms: bool, receipt: str, fail_code: int, error_code: int, mms_detail: bool
) -> list[dict[str, Any]]:
    """The event sequence of catapult-v1.md section 3 for a message's kind and receipt option."""
    if mms:
        # MMS: state sent or error; delivery fields only on some errors; never a receipt.
        if outcome == "delivered":
            return [status_truth("sent")]
        code = fail_code if outcome == "not-delivered" else error_code
        return [
            status_truth("error", "not-delivered", code) if mms_detail else status_truth("error")
        ]
    if outcome == "error":
        if receipt == "none":
            return [status_truth("error")]
        return [status_truth("error", "not-delivered", error_code)]
    if receipt == "none":
        return [status_truth("sent")]
    if receipt == "all":
        final = (
            status_truth("sent", "delivered", 0)
            if outcome == "delivered"
            else status_truth("sent", "not-delivered", fail_code)
        )
        return [status_truth("sent", "waiting"), final]
    # "error": the sent event, plus a receipt only when not delivered.
    if outcome == "delivered":
        return [status_truth("sent")]
    return [status_truth("sent"), status_truth("sent", "not-delivered", fail_code)]


def plan_message(knobs: Knobs, rng: random.Random, *, mms: bool, receipt: str) -> Plan:
    """Decide one message's events; every draw is made in a fixed order for reproducibility."""
    roll = rng.random()
    fail_code = rng.choice(NOT_DELIVERED_CODES)
    error_code = rng.choice(ERROR_CODES)
    mms_detail = rng.random() < 0.5
    if roll < knobs.error_share:
        outcome = "error"
    elif roll < knobs.error_share + knobs.failure_share:
        outcome = "not-delivered"
    else:
        outcome = "delivered"
    truths = logical_events(
        outcome,
        mms=mms,
        receipt=receipt,
        fail_code=fail_code,
        error_code=error_code,
        mms_detail=mms_detail,
    )
    events: list[PlannedEvent] = []
    offset = 0.0
    for seq, truth in enumerate(truths, start=1):
        gap = rng.uniform(knobs.delay_min_ms, knobs.delay_max_ms)
        if rng.random() < knobs.slow_share and seq > 1:
            gap += knobs.slow_delay_ms  # a slow receipt
        offset += gap
        events.append(PlannedEvent(seq=seq, offset_ms=offset, truth=truth))
    if rng.random() < knobs.reorder_share and len(events) >= 2:
        # The last logical event overtakes the one before it.
        events[-1].offset_ms, events[-2].offset_ms = events[-2].offset_ms, events[-1].offset_ms
    for event in list(events):
        lag = rng.uniform(0, max(knobs.delay_max_ms, 50.0))
        if rng.random() < knobs.duplicate_share:
            events.append(replace(event, offset_ms=event.offset_ms + lag, duplicate=True))
    inbound_roll, inbound_gap = rng.random(), rng.uniform(knobs.delay_min_ms, knobs.delay_max_ms)
    inbound_text = rng.choice(INBOUND_TEXTS)
    if inbound_roll < knobs.inbound_share:
        last = max(e.offset_ms for e in events)
        events.append(
            PlannedEvent(
                seq=1,
                offset_ms=last + inbound_gap,
                truth=status_truth("received"),
                kind="inbound",
                inbound_text=inbound_text,
            )
        )
    events.sort(key=lambda e: (e.offset_ms, e.kind == "inbound", e.duplicate, e.seq))
    if rng.random() < knobs.early_share:
        # Sent from the request handler before the 201/202 is written (see core.Sandbox).
        events[0].offset_ms = 0.0
        events[0].early = True
    for event in events:
        event.outage = rng.random() < knobs.primary_outage_share
        garbage_roll = rng.random()
        description, extra = rng.choice(ODD_DESCRIPTIONS), rng.choice(EXTRA_FIELDS)
        if garbage_roll < knobs.garbage_share and event.kind == "status":
            event.garbage = (description, extra)
    return Plan(outcome=outcome, events=events)
