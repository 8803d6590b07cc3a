"""Replay: apply the journal's entries to the database, in arrival order, exactly once.

Every process of the host runs a replayer thread; the one that holds ``replay.lock`` (a
``flock``, released by the kernel when its process dies, SIGKILL included) does the work, so
the entries of a worker that died are replayed by another process of the host or by its
replacement. A pass takes the oldest entries, applies them in one transaction through the
same function as live callbacks, and removes them from the journal once that transaction has
committed. A replayer killed in between leaves entries that are in the database already: their
request keys are found there (unique), so the next pass skips them instead of storing them
twice.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable

from ..events import Received
from ..metrics import JOURNAL_REPLAYED
from .store import Journal, JournalError

log = logging.getLogger(__name__)

BATCH = 200  # entries per replay transaction
INTERVAL = 0.25  # seconds between two looks at the marker while the journal is empty
BACKOFF_MAX = 2.0  # seconds between tries while the database stays unavailable
MAX_ATTEMPTS = 5  # failed applications before an entry is set aside (``dead_entries``)


class Replayer:
    """Replays ``journal`` with ``apply(events) -> results`` (a result that is an exception
    means that event could not be stored); ``apply`` raises ``unavailable`` when the
    database cannot be reached, and the replay waits and tries again."""

    def __init__(
        self,
        journal: Journal,
        apply: Callable[[list[Received]], list],
        unavailable: type[BaseException],
    ) -> None:
        self.journal = journal
        self.apply = apply
        self.unavailable = unavailable
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self.backoff = INTERVAL

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        """Start this process's replayer thread (once; cheap afterwards)."""
        if self._pid == os.getpid():
            self._wake.set()
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="relay-replay", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def wake(self) -> None:
        """Try now rather than at the end of the back-off (the database answered a probe)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current pass (its transaction commits or rolls back first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout)
        self._pid = None

    def _run(self) -> None:
        while not self._stop.is_set():
            delay = INTERVAL
            try:
                self.run_once()
                self.backoff = INTERVAL
            except self.unavailable as exc:
                self.backoff = min(BACKOFF_MAX, self.backoff * 2)
                delay = self.backoff
                log.info("journal replay waits %.1f s for the database: %s", delay, exc)
            except Exception:
                log.exception("journal replay failed")
                delay = BACKOFF_MAX
            self._wake.wait(delay)
            self._wake.clear()
        self.journal.close()

    # ------------------------------------------------------------------ one pass

    def run_once(self, limit: int | None = None, wait: bool = False) -> int:
        """Replay until the journal is empty (or ``limit`` entries); returns how many were
        applied. Does nothing unless the marker says entries wait and this thread gets the
        host's replay lock; ``wait``: waits for the lock (another thread may be replaying)
        and looks at the journal itself (the marker is briefly absent while a replayer that
        found the journal empty takes it away and looks again)."""
        if not self.journal.path.exists() or not (wait or self.journal.active()):
            return 0
        with _FlockIfFree(self.journal.folder / "replay.lock", wait) as held:
            if not held:
                return 0
            done = 0
            while limit is None or done < limit:
                entries = self.journal.head(BATCH if limit is None else min(BATCH, limit - done))
                if not entries:
                    if self.journal.settle():
                        break
                    continue
                done += self._apply(entries)
            return done

    def _apply(self, entries: list[tuple[int, Received]]) -> int:
        results = self.apply([received for _, received in entries])  # raises unavailable
        applied, failed = [], []
        for (entry_id, received), result in zip(entries, results, strict=True):
            (failed if isinstance(result, Exception) else applied).append(
                (entry_id, received, result)
            )
        self.journal.remove([entry_id for entry_id, _, _ in applied])
        JOURNAL_REPLAYED.inc(len(applied))
        for entry_id, received, error in failed:
            if self.journal.note_failure(
                entry_id, f"{type(error).__name__}: {error}", MAX_ATTEMPTS
            ):
                log.error("journal entry %s (%s) set aside: %s", entry_id, received.key, error)
        return len(applied)


class _FlockIfFree:
    """``with`` an exclusive ``flock`` if nobody holds it (as ``held``); waits only when
    ``wait``."""

    def __init__(self, path, wait: bool = False) -> None:
        self.path = path
        self.wait = wait
        self.fd: int | None = None

    def __enter__(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open {self.path}: {exc}") from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        return True

    def __exit__(self, *_exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file drops the lock
            self.fd = None
