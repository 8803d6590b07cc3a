"""The journal's log: a local SQLite database in ``JOURNAL_DIR`` with ``synchronous=FULL``.

SQLite is a crash-safe, well-tested log: in WAL mode with ``synchronous=FULL`` every commit
is on disk (the WAL fsync'd) before ``append`` returns, so the 200 that follows survives a
crash of the process or of the machine. Entries are numbered in arrival order (AUTOINCREMENT
never reuses a number) and carry the callback's request key, which makes applying one
idempotent in the main database.

Every process of the host opens the same file: writers queue on a ``flock`` (as the relay's
SQLite writers do, ``db_setup``) rather than on SQLite's sleeping busy handler. A file
``pending`` beside it exists whenever entries may be waiting: callbacks that see it go to the
journal too, so they are applied after the ones that waited (arrival order), and it costs a
live callback one ``stat`` to know.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ..events import Received

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    received_at TEXT NOT NULL,
    via TEXT NOT NULL,
    method TEXT NOT NULL,
    raw TEXT NOT NULL,
    content_type TEXT,
    user_agent TEXT,
    written_at TEXT NOT NULL,
    pid INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_entries AS SELECT * FROM entries WHERE 0;
"""
COLUMNS = "key, received_at, via, method, raw, content_type, user_agent, written_at, pid"


class JournalError(RuntimeError):
    """The journal cannot take an entry (disk full, no permission, ...)."""


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds")


class Journal:
    """The host's journal of callbacks. Thread-safe; one SQLite connection per thread."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "callbacks.sqlite3"
        self.marker = self.folder / "pending"
        self._marker = str(self.marker)  # os.path on a str: the hot path asks on every callback
        self._lock_path = self.folder / "callbacks.lock"
        self._local = threading.local()
        self._opened = False

    # ------------------------------------------------------------------ connections

    def _connection(self) -> tuple[sqlite3.Connection, int]:
        found = getattr(self._local, "conn", None)
        if found is not None and self._local.pid == os.getpid():
            return found
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open the journal in {self.folder}: {exc}") from exc
        try:
            # Opened under the writers' lock: the first processes of a host create the file,
            # switch it to WAL and add the tables at the same moment.
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            created = not self.path.exists()
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            if created:
                _fsync_folder(self.folder)  # the new file's directory entry is durable too
        except (OSError, sqlite3.Error) as exc:
            os.close(lock_fd)
            raise JournalError(f"cannot open the journal in {self.folder}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        self._local.conn, self._local.pid = (conn, lock_fd), os.getpid()
        return conn, lock_fd

    @contextmanager
    def _writing(self):
        """One write transaction, queued behind the other writers of the host."""
        conn, lock_fd = self._connection()
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close this thread's connection."""
        found = getattr(self._local, "conn", None)
        if found is not None and self._local.pid == os.getpid():
            found[0].close()
            os.close(found[1])
        self._local.conn = None

    # ------------------------------------------------------------------ writing

    def append(self, events: list[Received]) -> None:
        """Write ``events`` in one durable transaction (fsync'd before this returns)."""
        now, pid = _iso(datetime.now(UTC)), os.getpid()
        rows = [
            (
                e.key,
                _iso(e.received_at),
                e.via,
                e.method,
                e.raw,
                e.content_type,
                e.user_agent,
                now,
                pid,
            )
            for e in events
        ]
        try:
            with self._writing() as conn:
                conn.executemany(
                    f"INSERT OR IGNORE INTO entries ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows
                )
            self.marker.touch()
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot write to the journal {self.path}: {exc}") from exc

    def remove(self, ids: list[int]) -> None:
        """Forget entries that are in the database now."""
        if not ids:
            return
        with self._writing() as conn:
            conn.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids])

    def note_failure(self, entry_id: int, error: str, max_attempts: int) -> bool:
        """Count a failed attempt to apply an entry. After ``max_attempts`` it moves to
        ``dead_entries`` (kept for an operator, out of the way of the entries behind it);
        returns True then."""
        with self._writing() as conn:
            conn.execute(
                "UPDATE entries SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error[:500], entry_id),
            )
            row = conn.execute("SELECT attempts FROM entries WHERE id = ?", (entry_id,)).fetchone()
            if row is None or row[0] < max_attempts:
                return False
            conn.execute("INSERT INTO dead_entries SELECT * FROM entries WHERE id = ?", (entry_id,))
            conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
        return True

    def dead(self) -> int:
        """Entries that could not be applied after every attempt (see ``note_failure``)."""
        if not self.path.exists():
            return 0
        conn, _ = self._connection()
        return conn.execute("SELECT count(*) FROM dead_entries").fetchone()[0]

    # ------------------------------------------------------------------ reading

    def active(self) -> bool:
        """Entries may be waiting (the marker file exists): one ``stat``."""
        return os.path.exists(self._marker)

    def head(self, limit: int) -> list[tuple[int, Received]]:
        """The oldest entries, in arrival order."""
        conn, _ = self._connection()
        rows = conn.execute(
            "SELECT id, key, received_at, via, method, raw, content_type, user_agent "
            "FROM entries ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            (
                row[0],
                Received(
                    key=row[1],
                    received_at=datetime.fromisoformat(row[2]),
                    via=row[3],
                    method=row[4],
                    raw=row[5],
                    content_type=row[6],
                    user_agent=row[7],
                ),
            )
            for row in rows
        ]

    def depth(self) -> tuple[int, float | None]:
        """Entries waiting, and the age in seconds of the oldest (None when empty)."""
        if not self.path.exists():
            return 0, None
        conn, _ = self._connection()
        count, oldest = conn.execute("SELECT count(*), min(received_at) FROM entries").fetchone()
        if not count:
            return 0, None
        age = datetime.now(UTC) - datetime.fromisoformat(oldest)
        return count, max(0.0, age.total_seconds())

    def settle(self) -> bool:
        """Take the marker away when the journal is empty; True when it is.

        A writer touches the marker after its commit, and this re-reads the journal after the
        unlink, so an entry committed meanwhile always leaves the marker in place."""
        if self.depth()[0]:
            return False
        self.marker.unlink(missing_ok=True)
        if self.depth()[0]:
            self.marker.touch()
            return False
        return True

    def writable(self) -> bool:
        """The journal can take entries now: its folder is writable and has room."""
        try:
            self._connection()
            stats = os.statvfs(self.folder)
        except (JournalError, OSError):
            return False
        return os.access(self.folder, os.W_OK) and stats.f_bavail * stats.f_frsize > 16 << 20


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
