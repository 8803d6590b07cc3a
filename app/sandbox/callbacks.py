"""The callback sender's engine: delayed jobs on a small worker pool, in order per message."""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(order=True)
class _Job:
    due: float
    order: int
    key: str = field(compare=False)
    run: Callable[[], None] = field(compare=False)
    done: threading.Event | None = field(compare=False, default=None)


class OrderedScheduler:
    """Runs each job at its due time; jobs of one key run one at a time in due order.

    Different keys (messages) run concurrently on ``workers`` threads, so a slow receiver
    delays only its own message's later events, never the send responses.
    """

    def __init__(self, workers: int = 12, on_thread_exit: Callable[[], None] | None = None) -> None:
        self.workers = workers
        self._on_thread_exit = on_thread_exit
        self._cond = threading.Condition()
        self._heap: list[_Job] = []
        self._chains: dict[str, deque[_Job]] = {}
        self._ready: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._counter = itertools.count()
        self._pending = 0  # scheduled and not yet finished (or cancelled)
        self._in_flight = 0
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopping = False

    def _start(self) -> None:
        """Start the timer and worker threads on first use (under ``_cond``)."""
        self._started = True
        timer = threading.Thread(target=self._timer, name="sandbox-callback-timer", daemon=True)
        self._threads.append(timer)
        for n in range(self.workers):
            worker = threading.Thread(
                target=self._worker, name=f"sandbox-callback-{n}", daemon=True
            )
            self._threads.append(worker)
        for thread in self._threads:
            thread.start()

    def schedule(
        self, key: str, due: float, run: Callable[[], None], done: threading.Event | None = None
    ) -> bool:
        """Queue ``run`` for ``time.monotonic() >= due``; False once stopping."""
        with self._cond:
            if self._stopping:
                if done is not None:
                    done.set()
                return False
            if not self._started:
                self._start()
            heapq.heappush(self._heap, _Job(due, next(self._counter), key, run, done))
            self._pending += 1
            self._cond.notify_all()
            return True

    def _timer(self) -> None:
        """Move due jobs onto their key's chain; hand idle chains to the workers."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                while self._heap and self._heap[0].due <= now:
                    job = heapq.heappop(self._heap)
                    chain = self._chains.get(job.key)
                    if chain is None:
                        self._chains[job.key] = deque([job])
                        self._ready.put(job.key)
                    else:
                        chain.append(job)  # a worker owns this key and will take it in turn
                timeout = self._heap[0].due - now if self._heap else None
                self._cond.wait(timeout)

    def _worker(self) -> None:
        """Drain one key's chain at a time, in order."""
        try:
            while True:
                key = self._ready.get()
                if key is None:
                    return
                while True:
                    with self._cond:
                        chain = self._chains.get(key)
                        if not chain:
                            self._chains.pop(key, None)
                            break
                        job = chain.popleft()
                        self._in_flight += 1
                    try:
                        job.run()
                    except Exception:  # a job must never kill the worker
                        log.exception("sandbox callback job failed")
                    finally:
                        with self._cond:
                            self._in_flight -= 1
                            self._pending -= 1
                            self._cond.notify_all()
                        if job.done is not None:
                            job.done.set()
        finally:
            if self._on_thread_exit is not None:
                self._on_thread_exit()

    def status(self) -> dict[str, int | bool]:
        """Pending and in-flight counts; idle when nothing is left to attempt."""
        with self._cond:
            return {
                "idle": self._pending == 0,
                "pending": self._pending,
                "inFlight": self._in_flight,
            }

    def cancel_all(self) -> int:
        """Drop every job not yet started; running ones finish. Returns how many were dropped."""
        with self._cond:
            dropped = list(self._heap)
            self._heap.clear()
            for chain in self._chains.values():
                dropped.extend(chain)
                chain.clear()
            self._pending -= len(dropped)
            self._cond.notify_all()
        for job in dropped:
            if job.done is not None:
                job.done.set()
        return len(dropped)

    def wait_idle(self, timeout: float) -> bool:
        """Block until idle or ``timeout`` seconds pass; True when idle."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stop(self, timeout: float = 15.0) -> None:
        """Cancel what is queued, let running attempts end, join every thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.cancel_all()
        for _ in range(self.workers):
            self._ready.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
