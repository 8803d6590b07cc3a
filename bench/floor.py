"""One callback at a time, in process: what each layer under the HTTP server costs.

The same callbacks go through the relay's app with Flask's test client (no HTTP, no gunicorn),
recording every SQL statement they run on the DBAPI cursor; then exactly those statements are
replayed with the ``sqlite3`` module alone (no SQLAlchemy, no Flask) on a copy of the same
database, with ``synchronous=FULL`` (the relay's setting) and ``NORMAL``. The bare app goes
through the test client too. Differences between the rows are the cost of each layer.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from .servers import Credentials, environment, relay_env

SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=10000", "PRAGMA foreign_keys=ON")


def _requests(corpus: Path, count: int) -> list[tuple[str, str, str]]:
    lines = corpus.read_text().splitlines()[:count]
    return [tuple(line.split("\t", 2)) for line in lines]  # type: ignore[misc]


def _drive(app, requests, headers: dict) -> tuple[float, float, int]:
    """(wall s, CPU s, non-2xx) for sending ``requests`` one by one with the test client."""
    client = app.test_client()
    bad = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for method, path, body in requests:
        extra = {"Content-Type": "application/json; charset=utf-8"} if body else {}
        response = client.open(path, method=method, data=body or None, headers={**headers, **extra})
        bad += not 200 <= response.status_code < 300
    return time.perf_counter() - wall, time.process_time() - cpu, bad


def _replay(database: Path, statements: list[list[tuple]], synchronous: str):
    """The recorded statements of each callback, then COMMIT, with sqlite3 alone."""
    con = sqlite3.connect(database, isolation_level=None)
    for pragma in (*SQLITE_PRAGMAS, f"PRAGMA synchronous={synchronous}"):
        con.execute(pragma)
    wall, cpu = time.perf_counter(), time.process_time()
    for callback in statements:
        for sql, params in callback:
            con.execute(sql, params)
        if con.in_transaction:
            con.execute("COMMIT")
    result = time.perf_counter() - wall, time.process_time() - cpu
    con.close()
    return result


def measure(pristine: Path, corpus: Path, workdir: Path, count: int = 2000) -> list[dict]:
    """Rows of (path, wall ms, CPU ms per callback) for the relay, raw SQLite and the bare app."""
    from app import create_app, rawsql
    from app.extensions import db

    from .bare_app import app as bare

    requests = _requests(corpus, count)
    creds = Credentials()
    copies = {name: workdir / f"floor-{name}.sqlite3" for name in ("relay", "full", "normal")}
    for copy in copies.values():
        shutil.copyfile(pristine, copy)
    with environment(relay_env(copies["relay"], creds)):
        relay = create_app()
    recorded: list[list[tuple]] = []

    class Recorder:
        """The relay's DBAPI cursor, noting each statement and its parameters."""

        def __init__(self, cursor):
            self._cursor = cursor

        def execute(self, sql, params=()):
            recorded[-1].append((sql, params))
            return self._cursor.execute(sql, params)

        def __getattr__(self, name):
            return getattr(self._cursor, name)

    plain_execute = rawsql.Prepared.execute
    rawsql.Prepared.execute = lambda self, cursor, params: plain_execute(
        self, Recorder(cursor), params
    )
    # One list of statements per callback; write_transaction opens it with BEGIN IMMEDIATE.
    relay.before_request(lambda: recorded.append([("BEGIN IMMEDIATE", ())]))
    headers = {"Authorization": creds.callback_auth, "User-Agent": "BandwidthAPI/v1 (bench)"}
    try:
        relay_wall, relay_cpu, bad = _drive(relay, requests, headers)
    finally:
        rawsql.Prepared.execute = plain_execute
    with relay.app_context():
        db.engine.dispose()
    n = len(requests)
    rows = [
        (
            "relay in process (Flask test client → relay → SQLite FULL)",
            relay_wall,
            relay_cpu,
            bad,
        )
    ]
    for name, sync in (("full", "FULL"), ("normal", "NORMAL")):
        wall, cpu = _replay(copies[name], recorded, sync)
        rows.append((f"the same SQL with sqlite3 alone, synchronous={sync}", wall, cpu, 0))
    bare_wall, bare_cpu, bare_bad = _drive(bare, requests, {"User-Agent": "bench"})
    rows.append(("bare app in process (Flask test client)", bare_wall, bare_cpu, bare_bad))
    statements = sum(len(r) for r in recorded) / max(1, len(recorded))
    return [
        {
            "path": path,
            "wall_ms": wall * 1000 / n,
            "cpu_ms": cpu * 1000 / n,
            "per_second": n / wall if wall else 0.0,
            "non2xx": bad,
            "statements": statements if path.startswith(("relay", "the same")) else None,
        }
        for path, wall, cpu, bad in rows
    ]


def markdown(rows: list[dict], count: int) -> str:
    out = [
        "### Where a callback's time goes: one at a time, in process (no HTTP server)",
        "",
        f"{count:,} callbacks of the ingest corpus, serially. Wall and CPU per callback; "
        "'per second' is what one process could do at that cost.",
        "",
        "| path | wall ms | CPU ms | per second | SQL statements per callback | non-2xx |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        statements = f"{r['statements']:.1f}" if r["statements"] is not None else ""
        out.append(
            f"| {r['path']} | {r['wall_ms']:.3f} | {r['cpu_ms']:.3f} | "
            f"{r['per_second']:,.0f} | {statements} | {r['non2xx']} |"
        )
    return "\n".join(out) + "\n"
