"""Send pacing: a GCRA per account and per ``from`` number, on the dispatcher's monotonic clock.

The carrier averages over 10 s and counts the send being attempted (catapult-v1.md "Rate
limits"), so the relay must never put more than 10 x MPS sends in any 10 s window. GCRA at
rate r with tolerance tau allows at most (10 + tau) * r + 1 sends in a window; with
r = 0.99 x MPS and tau = 50 ms that is <= 10 x MPS (for whole-number MPS) with ~50 ms to spare
for network jitter, and the long-run rate is 1 % under target (spec: 2 %). The tolerance also
lets a loop that woke up late (or spent time in a request) catch up.
"""

from __future__ import annotations

PACE_HEADROOM = 0.99
PACE_TOLERANCE = 0.05
RATE_LIMIT_PAUSE = 1.0  # carrier said 403 message-rate-limit without saying for how long


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


class Pacer:
    """The account's bucket and one bucket per ``from`` number that has sent recently."""

    def __init__(self, mps: float, mps_per_number: float) -> None:
        self.account = Gcra(mps)
        self.per_number_rate = mps_per_number
        self.numbers: dict[str, Gcra] = {}

    @property
    def per_number(self) -> bool:
        """True when sends must be counted per number (a rate, or a carrier-imposed hold)."""
        return self.per_number_rate > 0 or bool(self.numbers)

    def bucket(self, number: str) -> Gcra:
        """The bucket of ``number`` (created fresh when it has none)."""
        bucket = self.numbers.get(number)
        if bucket is None:
            bucket = self.numbers[number] = Gcra(self.per_number_rate)
        return bucket

    def blocked(self, now: float) -> list[str]:
        """Numbers that may not send at ``now``; idle buckets are forgotten on the way (an idle
        bucket equals a fresh one, so the dict stays small)."""
        for number in [n for n, b in self.numbers.items() if b.idle(now)]:
            del self.numbers[number]
        return [n for n, b in self.numbers.items() if b.available(now, 1) == 0]

    def allowed(self, number: str, now: float, room: int) -> int:
        """How many of ``room`` sends ``number`` may make at ``now``."""
        return self.bucket(number).available(now, room) if self.per_number else room

    def take(self, number: str, now: float) -> None:
        """Account for one send from ``number`` at ``now``."""
        self.account.take(now)
        if self.per_number:
            self.bucket(number).take(now)

    def wait_blocked(self, blocked: list[str], now: float) -> list[float]:
        """Seconds until each of the ``blocked`` numbers may send again."""
        return [self.numbers[n].wait(now) for n in blocked if n in self.numbers]

    def hold_for_rate_limit(self, number: str, code: str, until: float) -> None:
        """The carrier says we are over its rate: pause that number (per-TN limit) or the whole
        account, so the rest of the queue does not run into the same 403."""
        if code == "message-rate-limit-per-tn":
            self.bucket(number).hold(until)
        else:
            self.account.hold(until)
