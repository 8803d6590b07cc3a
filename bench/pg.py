"""A throwaway PostgreSQL cluster for the ingest benchmark, with PostgreSQL's durable defaults.

Unlike ``tests/pg.py`` (``fsync=off``, ``full_page_writes=off``: fast tests), nothing about
durability is changed here: fsync, synchronous_commit and full_page_writes keep their defaults,
so a 200 from the relay means the event's commit reached the disk. The data folder sits in
``bench/.cache`` (the filesystem of the SQLite databases); the server runs as ``postgres`` when
the benchmark runs as root, and ``stop()`` removes everything.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import seed
from .servers import BenchError, children, cpu_seconds

DURABILITY = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """initdb + pg_ctl in a folder of ``bench/.cache``; ``url`` is the SQLAlchemy URL."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise BenchError("PostgreSQL server binaries are missing: apt-get install postgresql")
        self.bindir = os.path.dirname(found[-1])
        seed.CACHE.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="pg-", dir=seed.CACHE))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self.as_user, self.user = ["runuser", "-u", "postgres", "--"], "postgres"
        self.started = False
        self.url = f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/relay_bench"

    @property
    def libpq_url(self) -> str:
        return self.url.replace("postgresql+psycopg://", "postgresql://", 1)

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise BenchError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> str:
        import psycopg

        # --no-sync only skips initdb's own final fsync of the fresh, empty cluster.
        self._run(
            f"{self.bindir}/initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            self.user,
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c max_connections=100"
        )
        self._run(
            f"{self.bindir}/pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.folder / "log"),
            "start",
        )
        self.started = True
        admin = self.libpq_url.rsplit("/", 1)[0] + "/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute("CREATE DATABASE relay_bench")
                return self.url
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Fast shutdown (a server already gone is fine), then remove the folder."""
        try:
            if self.started:
                self.started = False
                self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        except BenchError as exc:
            print(f"bench: stopping PostgreSQL: {exc}", file=sys.stderr)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, WAL writer, checkpointer, ...)."""
        try:
            master = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [master, *children(master)]

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def describe(self) -> dict:
        """Server version and the settings that decide what a commit costs."""
        import psycopg

        with psycopg.connect(self.libpq_url) as conn:
            values = {"version": conn.execute("SHOW server_version").fetchone()[0]}
            for name in DURABILITY:
                values[name] = conn.execute(f"SHOW {name}").fetchone()[0]
        return values

    def activity(self) -> dict:
        """Cumulative commits of the benchmark database and WAL figures (pg_stat_*)."""
        import psycopg

        with psycopg.connect(self.libpq_url, autocommit=True) as conn:
            commits, rollbacks = conn.execute(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            ).fetchone()
            records, fpi, size, syncs = conn.execute(
                "SELECT wal_records, wal_fpi, wal_bytes, wal_sync FROM pg_stat_wal"
            ).fetchone()
        return {
            "commits": commits,
            "rollbacks": rollbacks,
            "wal_records": records,
            "wal_fpi": fpi,
            "wal_bytes": int(size),
            "wal_syncs": syncs,
        }

    # ------------------------------------------------------------ data

    def seed_accepted(self, n: int, seed_value: int = 1) -> list[dict]:
        """The same rows as ``seed.seed_accepted`` (SQLite), with COPY; then VACUUM ANALYZE
        and a checkpoint, so the runs start from settled tables and an empty WAL backlog."""
        import psycopg

        messages = seed.accepted_messages(n, seed_value)
        with psycopg.connect(self.libpq_url) as conn:
            conn.execute("SET TIME ZONE 'UTC'")  # seed.fmt() writes naive UTC times
            info = conn.execute(
                "SELECT column_name, is_nullable, column_default FROM information_schema.columns "
                "WHERE table_name = 'messages'"
            ).fetchall()
            names = {row[0] for row in info}
            required = {row[0] for row in info if row[1] == "NO" and row[2] is None}
            if missing := sorted(required - set(seed.MESSAGE_COLUMNS)):
                raise seed.SchemaDrift(f"bench/seed.py does not fill messages.{', '.join(missing)}")
            keep = [i for i, column in enumerate(seed.MESSAGE_COLUMNS) if column in names]
            columns = ", ".join(seed.MESSAGE_COLUMNS[i] for i in keep)
            with conn.cursor() as cur, cur.copy(f"COPY messages ({columns}) FROM STDIN") as copy:
                for message in messages:
                    row = seed.message_row(message)
                    # COPY's text input takes 0/1 for booleans, the strings for timestamptz/json.
                    copy.write_row([row[i] for i in keep])
        with psycopg.connect(self.libpq_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
        return messages

    def analyze(self) -> None:
        """``ANALYZE`` the benchmark database (what autovacuum does on its own schedule)."""
        import psycopg

        with psycopg.connect(self.libpq_url, autocommit=True) as conn:
            conn.execute("ANALYZE")

    def count(self, table: str = "callback_events") -> int:
        import psycopg

        with psycopg.connect(self.libpq_url) as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def max_event_id(self) -> int:
        import psycopg

        with psycopg.connect(self.libpq_url) as conn:
            return conn.execute("SELECT coalesce(max(id), 0) FROM callback_events").fetchone()[0]

    def event_mix(self, after_id: int) -> dict:
        import psycopg

        with psycopg.connect(self.libpq_url) as conn:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE applied), "
                "count(*) FILTER (WHERE duplicate), count(*) FILTER (WHERE late), "
                "count(*) FILTER (WHERE parked), count(*) FILTER (WHERE unparseable), "
                "count(*) FILTER (WHERE method = 'GET') FROM callback_events WHERE id > %s",
                (after_id,),
            ).fetchone()
        keys = ("events", "applied", "duplicate", "late", "parked", "unparseable", "get")
        return dict(zip(keys, row, strict=True))
