"""The status API (and dashboard) with 1,000,000 messages and 3,000,000 events.

The seeded database is cached under ``bench/.cache/`` keyed by the migrated schema's hash, the
seeder's source hash and the sizes, and reused for 24 h (its data spans the 30 days before it
was seeded, so "the last hour" windows go stale after that). Each endpoint group is loaded with
the same wrk settings as the baseline (the bare app's callback endpoint): latency ratios.
"""

from __future__ import annotations

import http.client
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

from . import seed
from .loadgen import run_wrk
from .servers import Credentials, Gunicorn, base_env, flask_command, migrate, relay_env

CACHE_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class Params:
    messages: int = 1_000_000
    events: int = 3_000_000
    seconds: float = 10.0
    warmup_s: float = 2.0
    threads: int = 1
    connections: int = 2
    samples: int = 2_000  # random ids per by-id corpus


QUICK = Params(messages=100_000, events=300_000, seconds=2.0, warmup_s=0.0)

# (group, what, target kind): the target kind picks the percentile and bound below.
TARGETS = {
    "by-id": ("p99_ms", 10.0),
    "list": ("p95_ms", 50.0),
    "stats": ("p99_ms", 200.0),
    "dashboard": ("p99_ms", 200.0),
}


# ------------------------------------------------------------------ the cached database


def database(workdir: Path, params: Params, reseed: bool, log=print) -> tuple[Path, dict]:
    """The seeded database for ``params``: from the cache when fresh, else seeded now."""
    template = workdir / "schema.sqlite3"
    migrate(template)
    key = f"api-{seed.schema_hash(template)}-{seed.SOURCE_HASH}-{params.messages}-{params.events}"
    seed.CACHE.mkdir(parents=True, exist_ok=True)
    path, meta_path = seed.CACHE / f"{key}.sqlite3", seed.CACHE / f"{key}.json"
    if path.exists() and meta_path.exists() and not reseed:
        meta = json.loads(meta_path.read_text())
        age = datetime.now(UTC) - datetime.fromisoformat(meta["seeded_at"])
        if age < CACHE_TTL:
            log(f"api: cached database {path.name} (seeded {age.total_seconds() / 3600:.1f} h ago)")
            return path, {**meta, "cached": True}
        log(f"api: cached database is {age} old: seeding again")
    # Only one cached database per size: the others are from older schemas or seeders.
    for old in seed.CACHE.glob(f"api-*-{params.messages}-{params.events}.*"):
        old.unlink()
    log(
        f"api: seeding {params.messages:,} messages and {params.events:,} events "
        "(once; cached under bench/.cache/) ..."
    )
    started = datetime.now(UTC)
    partial = path.with_suffix(".partial")
    shutil.copyfile(template, partial)
    meta = seed.seed_scale(partial, params.messages, params.events, progress=log)
    # A running relay's dispatcher keeps the stats rollups; bring a seeded history up to date.
    log("api: computing the stats rollups over the seeded history ...")
    log("api: " + flask_command(partial, "rollups", timeout=1800).strip())
    partial.rename(path)
    meta["seed_seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    meta["bytes"] = path.stat().st_size
    meta_path.write_text(json.dumps(meta, indent=2))
    return path, {**meta, "cached": False}


# ------------------------------------------------------------------ corpora


def _get(port: int, path: str, auth: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path, headers={"Authorization": auth})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _write(path: Path, paths: list[str]) -> Path:
    path.write_text("".join(f"GET\t{p}\t\n" for p in paths))
    return path


def corpora(db: Path, workdir: Path, relay: Gunicorn, creds: Credentials, params: Params):
    """(name, group, corpus file, auth) for every endpoint group; page-2 paths come from the
    ``next`` links of real first pages."""
    ids = seed.random_rows(
        db, "SELECT id, carrier_message_id, from_number, tag FROM messages", params.samples
    )
    relay_ids = [r[0] for r in ids]
    carrier_ids = [r[1] for r in ids if r[1]]
    senders = sorted({r[2] for r in ids if r[0]})
    tags = [r[3] for r in ids if r[3]]
    api, dash = creds.api_auth, creds.dashboard_auth
    since = (datetime.now(UTC) - timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    firsts = [f"/api/messages?status=delivered&limit=50&from={quote(n)}" for n in senders[:40]]
    firsts += [f"/api/messages?tag={quote(t)}&limit=50" for t in tags[:40]]
    firsts += ["/api/messages?status=delivered&limit=50", "/api/messages?limit=50"]
    seconds = []
    for first in firsts:
        status, body = _get(relay.port, first, api)
        following = json.loads(body).get("next") if status == 200 else None
        if following:
            parts = urlsplit(following)
            seconds.append(f"{parts.path}?{parts.query}")
    groups = [
        ("GET /api/messages/{relay id}", "by-id", [f"/api/messages/{i}" for i in relay_ids], api),
        (
            "GET /api/messages/{carrier id}",
            "by-id",
            [f"/api/messages/{i}" for i in carrier_ids],
            api,
        ),
        (
            "list ?status=delivered&limit=50",
            "list",
            ["/api/messages?status=delivered&limit=50"],
            api,
        ),
        (
            "list ?from=<number>&limit=50",
            "list",
            [f"/api/messages?from={quote(n)}&limit=50" for n in senders],
            api,
        ),
        (
            "list ?tag=<tag>&limit=50",
            "list",
            [f"/api/messages?tag={quote(t)}&limit=50" for t in tags],
            api,
        ),
        ("list page 2 (cursor)", "list", seconds, api),
        ("GET /api/stats (all time)", "stats", ["/api/stats"], api),
        ("GET /api/stats?since=-24h", "stats", [f"/api/stats?since={since}"], api),
    ]
    status, _ = _get(relay.port, "/dashboard/", dash)
    if status == 200:
        groups += [
            ("dashboard overview (1h)", "dashboard", ["/dashboard/"], dash),
            ("dashboard overview (24h)", "dashboard", ["/dashboard/?window=24h"], dash),
            ("dashboard messages", "dashboard", ["/dashboard/messages"], dash),
            (
                "dashboard messages ?status=delivered",
                "dashboard",
                ["/dashboard/messages?status=delivered"],
                dash,
            ),
            (
                "dashboard messages ?number=<from>",
                "dashboard",
                [f"/dashboard/messages?number={quote(n)}" for n in senders],
                dash,
            ),
            (
                "dashboard message page",
                "dashboard",
                [f"/dashboard/messages/{i}" for i in relay_ids[:500]],
                dash,
            ),
            ("dashboard events", "dashboard", ["/dashboard/events"], dash),
        ]
    out = []
    for number, (name, group, paths, auth) in enumerate(groups):
        corpus = _write(workdir / f"api-{number}.txt", paths) if paths else None
        out.append((name, group, paths, corpus, auth))
    return out, status == 200


# ------------------------------------------------------------------ run

# An endpoint slower than this per request gets too few answers in a wrk window: it is timed
# with SLOW_COUNT sequential requests instead (one at a time, nothing else running).
SLOW_MS = 500.0
SLOW_COUNT = 5


def _sequential(port: int, paths: list[str], auth: str, count: int) -> dict:
    """Latency of ``count`` requests sent one after the other (nearest-rank percentiles)."""
    times, non2xx = [], 0
    for i in range(count):
        started = time.perf_counter()
        status, _ = _get(port, paths[i % len(paths)], auth)
        times.append((time.perf_counter() - started) * 1000)
        non2xx += not 200 <= status < 300
    times.sort()

    def rank(fraction: float) -> float:
        return times[min(len(times) - 1, max(0, math.ceil(fraction * len(times)) - 1))]

    return {
        "n": count,
        "rps": 0.0,
        "p50_ms": rank(0.5),
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
        "max_ms": times[-1],
        "non2xx": non2xx,
    }


def _row(name: str, group: str, result: dict) -> dict:
    latency = result["latency_ms"]
    return {
        "name": name,
        "group": group,
        "n": result["answered"],
        "rps": round(result["rps"], 1),
        "p50_ms": latency["p50"],
        "p95_ms": latency["p95"],
        "p99_ms": latency["p99"],
        "max_ms": latency["max"],
        "non2xx": result["non2xx"],
    }


def run(wrk: str, workdir: Path, quick: bool = False, reseed: bool = False, log=print) -> dict:
    """Seed (or reuse) the big database, then load each endpoint group and the baseline."""
    params = QUICK if quick else Params()
    db, meta = database(workdir, params, reseed, log)
    creds = Credentials()
    relay = Gunicorn("api-relay", "wsgi:app", relay_env(db, creds), workdir, mode="config")
    bare = Gunicorn("api-bare", "bench.bare_app:app", base_env(), workdir)
    load = {"threads": params.threads, "connections": params.connections}
    with relay, bare:
        relay.wait_ready("/healthz")
        bare.wait_ready("/callbacks/catapult")
        groups, dashboard = corpora(db, workdir, relay, creds, params)
        baseline_corpus = workdir / "api-baseline.txt"
        seed.write_callback_corpus(baseline_corpus, seed.accepted_messages(params.samples))
        if params.warmup_s:
            run_wrk(wrk, bare.url, baseline_corpus, seconds=params.warmup_s, **load)
        baseline = _row(
            "bare callback endpoint (baseline)",
            "baseline",
            run_wrk(wrk, bare.url, baseline_corpus, seconds=params.seconds, **load),
        )
        rows = []
        for name, group, paths, corpus, auth in groups:
            if corpus is None:
                rows.append({"name": name, "group": group, "n": 0, "note": "no input"})
                log(f"api: {name}: not measured (no first page answered 200)")
                continue
            # Three probes (they also warm the caches); the median decides, so an endpoint
            # that caches its figures (the dashboard overview) is not taken for a slow one.
            probe = _sequential(relay.port, paths, auth, 3)
            if probe["p50_ms"] > SLOW_MS:
                row = _sequential(relay.port, paths, auth, SLOW_COUNT)
                row.update(name=name, group=group, note="sequential")
            else:
                if params.warmup_s:
                    run_wrk(wrk, relay.url, corpus, seconds=params.warmup_s, auth=auth, **load)
                result = run_wrk(wrk, relay.url, corpus, seconds=params.seconds, auth=auth, **load)
                row = _row(name, group, result)
            rows.append(row)
            log(
                f"api: {name}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms "
                f"(n={row['n']}, non-2xx {row['non2xx']})"
            )
    return {
        "params": asdict(params),
        "database": meta,
        "baseline": baseline,
        "rows": rows,
        "dashboard": dashboard,
    }


# ------------------------------------------------------------------ report


def markdown(result: dict) -> str:
    p, meta, base = result["params"], result["database"], result["baseline"]
    size = meta.get("bytes")
    out = [
        "## Status API at scale",
        "",
        f"{p['messages']:,} messages and {p['events']:,} events in SQLite"
        + (f" ({size / 1e9:.1f} GB" if size else " (")
        + f", seeded {meta['seeded_at'][:16]}Z{', cached' if meta.get('cached') else ''}). "
        f"wrk -t{p['threads']} -c{p['connections']} for {p['seconds']:g} s per group after three "
        f"probe requests{f' and {warmup:g} s of warm-up' if (warmup := p['warmup_s']) else ''}, "
        "random existing ids; the relay under its gunicorn.conf.py, the bare app -w 2 sync. "
        "Ratios are against the bare Flask callback endpoint under the same loop.",
        "",
        "| endpoint | n | p50 ms | p95 ms | p99 ms | max ms | p50 / bare | p99 / bare | "
        "non-2xx | target | |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        f"| {base['name']} | {base['n']:,} | {base['p50_ms']:.2f} | {base['p95_ms']:.2f} | "
        f"{base['p99_ms']:.2f} | {base['max_ms']:.1f} | 1.00x | 1.00x | {base['non2xx']} | | |",
    ]
    for r in result["rows"]:
        key, bound = TARGETS[r["group"]]
        if not r["n"]:
            out.append(
                f"| {r['name']} | 0 | | | | | | | | {key.split('_')[0]} < {bound:g} ms "
                "| not measured: no first page answered 200 |"
            )
            continue
        if r.get("note") == "sequential":
            r = {**r, "name": r["name"] + " †"}
        ok = r[key] < bound and r["non2xx"] == 0
        out.append(
            f"| {r['name']} | {r['n']:,} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['p50_ms'] / base['p50_ms']:.1f}x | "
            f"{r['p99_ms'] / base['p99_ms']:.1f}x | {r['non2xx']} | "
            f"{key.split('_')[0]} < {bound:g} ms | {'✅' if ok else '❌'} |"
        )
    if any(r.get("note") == "sequential" for r in result["rows"]):
        out += [
            "",
            f"† slower than {SLOW_MS:g} ms per request: timed with {SLOW_COUNT} "
            "sequential requests instead of the wrk loop (no concurrent load).",
        ]
    if not result["dashboard"]:
        out += ["", "The dashboard (`/dashboard/`) did not answer 200: not measured."]
    return "\n".join(out) + "\n"
