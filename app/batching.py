"""Group commit: request threads hand items to one writer thread that commits them in batches.

Under gunicorn's threaded workers many callbacks of one process arrive together. Committing
each on its own costs one flush to disk (and, on SQLite, one turn of the database's single
write lock) per callback; one writer thread that takes everything waiting and commits it in
one transaction pays that once per batch. The request thread waits for its item with a
deadline of its own, so a database that hangs cannot keep it from answering: it gives up
(``abandon``) and takes another way (the journal).
"""

from __future__ import annotations

import _thread
import logging
import os
import queue
import threading
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
        # Held until the writer is done with the item: the cheapest thing to wait on with a
        # timeout (a threading.Event is a condition variable, a lock and a list of waiters).
        self._done = _thread.allocate_lock()
        self._done.acquire()

    def wait(self, timeout: float | None) -> bool:
        """True when the writer finished with this item within ``timeout`` seconds."""
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            return False
        self._done.release()  # stays free: asking again answers at once
        return True

    def abandon(self) -> None:
        """The submitter gives up waiting; a writer that has not begun the item skips it."""
        self.abandoned = True

    def resolve(self, result: Any) -> None:
        self.result = result
        self._done.release()

    def reject(self, error: BaseException) -> None:
        self.error = error
        self._done.release()

    @property
    def done(self) -> bool:
        return not self._done.locked()


_STOP = object()


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
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stopping = False

    def submit(self, item: Any) -> Pending:
        """Queue ``item`` for the next batch; wait on the returned ``Pending``."""
        pending = Pending(item)
        if self._stopping or self._pid != os.getpid():
            with self._lock:
                if self._stopping:
                    pending.reject(RuntimeError(f"{self.name} is stopping"))
                    return pending
                if self._pid != os.getpid():
                    self._start()
        self._queue.put(pending)
        return pending

    def _start(self) -> None:
        # A fresh thread per process: after a fork the parent's thread does not exist here.
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._pid = os.getpid()

    def _run(self) -> None:
        take = self._queue.get
        more = self._queue.get_nowait
        while True:
            batch = [take()]
            try:  # and everything that arrived meanwhile, up to max_batch
                while len(batch) < self.max_batch:
                    batch.append(more())
            except queue.Empty:
                pass
            stopping = _STOP in batch
            batch = [p for p in batch if p is not _STOP and not p.abandoned]
            if batch:
                try:
                    self.commit(batch)
                except BaseException as exc:  # the thread must outlive any failure of a batch
                    log.exception("%s: a batch of %d failed", self.name, len(batch))
                    for pending in batch:
                        if not pending.done:
                            pending.reject(exc)
            if stopping and self._queue.empty():
                return

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what was submitted, then end the thread (graceful shutdown)."""
        with self._lock:
            self._stopping = True
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    @property
    def backlog(self) -> int:
        """Items waiting for a batch."""
        return self._queue.qsize()
