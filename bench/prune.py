"""Retention under load: callback latency while ``flask prune`` deletes a month of old rows.

A SQLite database holds ``messages`` messages and ``events`` events spread over the last 60
days (cached under ``bench/.cache/`` like the status-API one, rollups computed), plus recently
accepted messages whose events make the callback corpus. The relay runs under gunicorn with
its gunicorn.conf.py (2 workers); wrk sends callbacks at a steady paced rate for one window
without a prune, then ``flask --app wsgi prune --older-than 30d`` starts in its own process
and the same window is measured while it runs, then one more window after it. Latency ratios
are within this run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import seed
from .api_scale import CACHE_TTL
from .ingest import start_relay
from .loadgen import run_wrk
from .servers import BIN, ROOT, BenchError, Credentials, ManagedProcess, migrate, relay_env

TARGET_P99_MS = 50.0
DAYS = 60
OLDER_THAN = "30d"


@dataclass(frozen=True)
class Params:
    messages: int = 400_000  # over the last 60 days: about half of them older than 30 days
    events: int = 1_200_000
    accepted: int = 20_000  # recent messages whose events are the callback corpus
    rate: float = 250.0  # callbacks per second, paced
    threads: int = 2
    connections: int = 10
    window_s: float = 10.0
    warmup_s: float = 2.0


QUICK = Params(messages=60_000, events=180_000, accepted=5_000, window_s=5.0, warmup_s=2.0)


def _log_default(message: str) -> None:
    print(message, flush=True)


def database(workdir: Path, params: Params, log=_log_default) -> Path:
    """A fresh copy of the seeded history (from the cache when fresh) with the recent
    accepted messages added."""
    template = workdir / "schema.sqlite3"
    migrate(template)
    key = (
        f"prune-{seed.schema_hash(template)}-{seed.SOURCE_HASH}-"
        f"{params.messages}-{params.events}-{DAYS}"
    )
    cached, meta_path = seed.CACHE / f"{key}.sqlite3", seed.CACHE / f"{key}.json"
    fresh = False
    if cached.exists() and meta_path.exists():
        seeded_at = datetime.fromisoformat(json.loads(meta_path.read_text())["seeded_at"])
        fresh = datetime.now(UTC) - seeded_at < CACHE_TTL
    if not fresh:
        for old in seed.CACHE.glob(f"prune-*-{params.messages}-{params.events}-{DAYS}.*"):
            old.unlink()
        log(f"seeding {params.messages:,} messages and {params.events:,} events over {DAYS} days")
        partial = cached.with_suffix(".partial")
        shutil.copyfile(template, partial)
        meta = seed.seed_scale(partial, params.messages, params.events, progress=log, days=DAYS)
        log("computing the stats rollups over the seeded history ...")
        _flask(partial, "rollups", timeout=1800)
        partial.rename(cached)
        meta_path.write_text(json.dumps(meta, indent=2))
    else:
        log(f"cached database {cached.name}")
    for stale in seed.CACHE.glob("prune-*.writelock"):
        stale.unlink()  # the writers' lock file of the rollups run on the partial copy
    target = workdir / "prune.sqlite3"
    shutil.copyfile(cached, target)
    return target


def _flask(database: Path, *args: str, timeout: float = 600) -> str:
    from .servers import flask_command

    return flask_command(database, *args, timeout=timeout)


def _count(database: Path, sql: str) -> int:
    con = sqlite3.connect(database)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def _row(result: dict) -> dict:
    latency = result["latency_ms"]
    return {
        "rps": round(result["rps"], 1),
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "max_ms": latency["max"],
        "ok": result["ok"],
        "non2xx": result["non2xx"],
        "socket_errors": sum(v for k, v in result["errors"].items() if k != "status"),
        "in_flight": result["in_flight"],
    }


def _wait_for_line(process: ManagedProcess, pattern: str, timeout: float) -> float:
    """Until ``pattern`` appears in the process's log; the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, process.log.read_text(errors="replace")):
            return time.monotonic()
        if not process.alive():
            raise BenchError(f"prune exited before it started deleting:\n{process.log_tail()}")
        time.sleep(0.05)
    raise BenchError(f"prune did not start within {timeout:.0f} s:\n{process.log_tail()}")


def run(wrk: str, workdir: Path, quick: bool = False, log=_log_default) -> dict:
    """Seed (or reuse), start the relay, measure before, during and after one prune."""
    params = QUICK if quick else Params()

    def say(message: str) -> None:
        log(f"prune: {message}")

    db = database(workdir, params, say)
    accepted = seed.seed_accepted(db, params.accepted)
    corpus = workdir / "prune-callbacks.txt"
    lines = seed.write_callback_corpus(corpus, accepted)
    # Seeding and copying leave much of the file to be written back: done before measuring,
    # so that the relay's fsyncs do not queue behind it in the first window.
    os.sync()
    counts_before = {
        "messages": _count(db, "SELECT count(*) FROM messages"),
        "events": _count(db, "SELECT count(*) FROM callback_events"),
    }
    say(
        f"{counts_before['messages']:,} messages, {counts_before['events']:,} events, "
        f"corpus of {lines:,} callbacks"
    )
    creds = Credentials()
    relay = start_relay(db, workdir, creds)
    offset = 0
    windows: dict[str, dict] = {}
    with relay:
        relay.wait_ready("/healthz")

        def load(seconds: float) -> dict:
            nonlocal offset
            result = run_wrk(
                wrk,
                relay.url,
                corpus,
                threads=params.threads,
                connections=params.connections,
                seconds=seconds,
                rate=params.rate,
                offset=offset,
                auth=creds.callback_auth,
            )
            offset += result["sent"]
            return result

        load(params.warmup_s)
        time.sleep(0.5)  # the warm-up's abandoned requests commit before the mark
        first_new = _count(db, "SELECT coalesce(max(id), 0) FROM callback_events")
        windows["before"] = _row(load(params.window_s))
        say(f"without prune: p99 {windows['before']['p99_ms']:.1f} ms")
        args = [str(BIN / "flask"), "--app", "wsgi", "prune", "--older-than", OLDER_THAN]
        env = relay_env(db, Credentials())
        with ManagedProcess("prune", args, env, workdir / "prune.log", ROOT) as prune:
            started = time.monotonic()
            deleting = _wait_for_line(prune, r"prune: rollups up to date", timeout=600)
            window_start = time.monotonic()
            windows["during"] = _row(load(params.window_s))
            window_end = time.monotonic()
            prune.proc.wait(timeout=3600)
            ended = time.monotonic()
            output = prune.log.read_text(errors="replace")
            if prune.proc.returncode != 0:
                raise BenchError(f"prune failed ({prune.proc.returncode}):\n{output[-2000:]}")
        say(f"during prune: p99 {windows['during']['p99_ms']:.1f} ms")
        windows["after"] = _row(load(params.window_s))
        time.sleep(0.5)  # let the requests wrk abandoned in flight commit
        stored = _count(db, f"SELECT count(*) FROM callback_events WHERE id > {first_new}")

    summary = re.search(
        r"deleted ([\d,]+) messages, ([\d,]+) events\b.*\((\d+) batches, ([\d,]+) rows",
        output,
    )
    if summary is None:
        raise BenchError(f"prune printed no summary:\n{output[-2000:]}")
    deleted_messages, deleted_events, batches, scanned = (
        int(g.replace(",", "")) for g in summary.groups()
    )
    answered = sum(w["ok"] + w["in_flight"] for w in windows.values())
    overlap = max(0.0, min(window_end, ended) - window_start) / (window_end - window_start)
    return {
        "params": asdict(params),
        "older_than": OLDER_THAN,
        "before": counts_before,
        "after": {
            "messages": _count(db, "SELECT count(*) FROM messages"),
            "events": _count(db, "SELECT count(*) FROM callback_events"),
        },
        "windows": windows,
        "prune": {
            "messages": deleted_messages,
            "events": deleted_events,
            "batches": batches,
            "scanned": scanned,
            "startup_s": round(deleting - started, 2),
            "deleting_s": round(ended - deleting, 2),
            "window_overlap": round(overlap, 3),
            "progress_lines": len(re.findall(r"so far", output)),
        },
        # Every callback of the measured windows (2xx or abandoned in flight) is a stored event.
        "stored_exact": stored == answered and not any(w["non2xx"] for w in windows.values()),
        "stored": stored,
    }


def markdown(result: dict) -> str:
    """The latency table (without / during / after the prune) and what the prune did."""
    p, w, pr = result["params"], result["windows"], result["prune"]
    before, during, after = w["before"], w["during"], w["after"]

    def ratio(key: str) -> str:
        return f"{during[key] / before[key]:.2f}x" if before[key] else "-"

    ok = during["p99_ms"] < TARGET_P99_MS
    rows_per_s = (pr["messages"] + pr["events"]) / max(pr["deleting_s"], 1e-9)
    out = [
        "## Retention: callbacks while `flask prune` runs (SQLite)",
        "",
        f"{result['before']['messages']:,} messages and {result['before']['events']:,} events "
        f"over {DAYS} days; `flask --app wsgi prune --older-than {result['older_than']}` in its "
        f"own process while wrk sends callbacks at {p['rate']:g}/s (-t{p['threads']} "
        f"-c{p['connections']}) for {p['window_s']:g} s windows: without the prune, during it "
        f"(the prune covered {pr['window_overlap']:.0%} of that window), and after it. "
        "The relay under its gunicorn.conf.py (2 workers), DISPATCH=off.",
        "",
        "| figure | without prune | during prune | after prune | during / without | target | |",
        "|---|---:|---:|---:|---:|---|---|",
        f"| callbacks answered (req/s) | {before['rps']:,.0f} | {during['rps']:,.0f} | "
        f"{after['rps']:,.0f} | {ratio('rps')} | | |",
        f"| p50 latency (ms) | {before['p50_ms']:.2f} | {during['p50_ms']:.2f} | "
        f"{after['p50_ms']:.2f} | {ratio('p50_ms')} | | |",
        f"| p99 latency (ms) | {before['p99_ms']:.2f} | {during['p99_ms']:.2f} | "
        f"{after['p99_ms']:.2f} | {ratio('p99_ms')} | < {TARGET_P99_MS:g} ms during | "
        f"{'✅' if ok else '❌'} |",
        f"| max latency (ms) | {before['max_ms']:.1f} | {during['max_ms']:.1f} | "
        f"{after['max_ms']:.1f} | {ratio('max_ms')} | | |",
        f"| non-2xx / socket errors | {before['non2xx']} / {before['socket_errors']} | "
        f"{during['non2xx']} / {during['socket_errors']} | {after['non2xx']} / "
        f"{after['socket_errors']} | | 0 | "
        f"{'✅' if not (during['non2xx'] or during['socket_errors']) else '❌'} |",
        "",
        f"The prune deleted {pr['messages']:,} messages and {pr['events']:,} events in "
        f"{pr['batches']:,} batches ({pr['scanned']:,} rows looked at) in {pr['deleting_s']:.1f} s "
        f"after {pr['startup_s']:.1f} s of start-up and rollup catch-up: {rows_per_s:,.0f} rows/s, "
        "pausing after each batch as long as it held the write lock. Left: "
        f"{result['after']['messages']:,} messages, {result['after']['events']:,} events. "
        f"Callback events stored in the measured windows: {result['stored']:,}"
        f" ({'every 2xx committed' if result['stored_exact'] else 'FEWER than the 2xx answers'}).",
    ]
    return "\n".join(out) + "\n"
