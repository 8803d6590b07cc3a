"""Group commit: request threads hand items to one writer thread that commits them in batches.

Under gunicorn's threaded workers many callbacks of one process arrive together. Committing
each on its own costs one flush to disk (and, on SQLite, one turn of the database's single
write lock) per callback; one writer thread that takes everything waiting and commits it in
one transaction pays that once per batch. The request thread waits for its item with a
deadline of its own, so a database that hangs cannot keep it from answering: it gives up
(``abandon``) and takes another way (the journal).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Pending:
    """One item on its way through a writer: resolved with a result, or rejected."""

    __slots__ = ("item", "result", "error", "abandoned", "_done")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned = False  # the submitter stopped waiting: skip it if not begun
        self._done = threading.Event()

    def wait(self, timeout: float | None) -> bool:
        """True when the writer finished with this item within ``timeout`` seconds."""
        return self._done.wait(timeout)

    def abandon(self) -> None:
        """The submitter gives up waiting; a writer that has not begun the item skips it."""
        self.abandoned = True

    def resolve(self, result: Any) -> None:
        self.result = result
        self._done.set()

    def reject(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()


class GroupWriter:
    """A thread of this process that passes every waiting item to ``commit(batch)``.

    ``commit`` resolves or rejects each ``Pending`` of the batch; if it raises, every item
    it left open is rejected with that error. Items whose submitter abandoned them before
    their batch began are dropped (the submitter took care of them)."""

    def __init__(
        self, name: str, commit: Callable[[list[Pending]], None], max_batch: int = 200
    ) -> None:
        self.name = name
        self.commit = commit
        self.max_batch = max_batch
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Pending] = deque()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stopping = False

    def submit(self, item: Any) -> Pending:
        """Queue ``item`` for the next batch; wait on the returned ``Pending``."""
        pending = Pending(item)
        with self._cond:
            if self._stopping:
                pending.reject(RuntimeError(f"{self.name} is stopping"))
                return pending
            if self._pid != os.getpid():
                self._start()
            self._queue.append(pending)
            self._cond.notify()
        return pending

    def _start(self) -> None:
        # A fresh thread per process: after a fork the parent's thread does not exist here.
        self._queue.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                count = min(len(self._queue), self.max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
            batch = [p for p in batch if not p.abandoned]
            if not batch:
                continue
            try:
                self.commit(batch)
            except BaseException as exc:  # the thread must outlive any failure of a batch
                log.exception("%s: a batch of %d failed", self.name, len(batch))
                for pending in batch:
                    if not pending.done:
                        pending.reject(exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what was submitted, then end the thread (graceful shutdown)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None:
            thread.join(timeout)

    @property
    def backlog(self) -> int:
        """Items waiting for a batch."""
        return len(self._queue)
