"""Send rate limits: per account and per ``from`` number, averaged over 10 s (catapult-v1.md)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from . import errors

WINDOW_SECONDS = 10.0


class RateLimiter:
    """Sliding 10-second windows of accepted sends; ``0`` disables a limit."""

    def __init__(
        self,
        mps: float,
        mps_per_number: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mps = mps
        self.mps_per_number = mps if mps_per_number is None else mps_per_number
        self._clock = clock
        self._lock = threading.Lock()
        self._account: deque[float] = deque()
        self._numbers: dict[str, deque[float]] = {}

    @property
    def enabled(self) -> bool:
        """Whether any limit is on."""
        return self.mps > 0 or self.mps_per_number > 0

    def take(self, from_number: str) -> None:
        """Count one send, or raise 403 ``message-rate-limit`` without counting it."""
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            number = self._numbers.setdefault(from_number, deque())
            for window in (self._account, number):
                while window and window[0] <= now - WINDOW_SECONDS:
                    window.popleft()
            # The platform's rate includes the send being attempted: 11 sends in 10 s at
            # 1 mps is reported as "Your rate is: 1.1" (catapult-v1.md sample message).
            for limit, window in ((self.mps, self._account), (self.mps_per_number, number)):
                rate = (len(window) + 1) / WINDOW_SECONDS
                if limit > 0 and rate > limit:
                    raise errors.message_rate_limit(limit, round(rate, 3))
            self._account.append(now)
            number.append(now)

    def reset(self) -> None:
        """Forget all counted sends."""
        with self._lock:
            self._account.clear()
            self._numbers.clear()


class ReadLimiter:
    """Requests per second on the read endpoints over a sliding 1-second window; ``0`` is off.

    catapult-v1.md 1: non-send endpoints answer 429 ``rate-limit-reached`` with
    ``X-RateLimit-Reset`` in epoch milliseconds (sends get 403 instead, see ``RateLimiter``).
    """

    WINDOW_SECONDS = 1.0

    def __init__(
        self,
        per_second: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_second = per_second
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._window: deque[float] = deque()

    def take(self) -> None:
        """Count one read, or raise 429 without counting it."""
        if self.per_second <= 0:
            return
        with self._lock:
            now = self._clock()
            while self._window and self._window[0] <= now - self.WINDOW_SECONDS:
                self._window.popleft()
            if len(self._window) >= self.per_second:
                # The window frees a place when its oldest read leaves it.
                wait = self._window[0] + self.WINDOW_SECONDS - now
                raise errors.rate_limit_reached(round((self._wall_clock() + wait) * 1000))
            self._window.append(now)

    def reset(self) -> None:
        """Forget all counted reads."""
        with self._lock:
            self._window.clear()
