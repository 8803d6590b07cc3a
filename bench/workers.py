"""The worker model, measured: the relay's callback endpoint under each gunicorn setting it
could ship with, side by side in one rotation, against the bare Flask endpoint under both of
its worker classes.

``gunicorn.conf.py`` ships threaded workers (a slow client holds a thread, not a worker: see
``tests/reliability/test_slow_and_stalled.py``); this benchmark is how its thread count and
switch interval were chosen, and shows what the sync workers it replaced would give the same
code. Every variant has 2 workers and gets the same wrk load, in alternating rounds; the
stored events are counted after each relay round (every 2xx must be committed).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from . import ingest
from .loadgen import run_wrk
from .servers import Credentials, Gunicorn, base_env, cpu_seconds

# (name, gunicorn mode, environment): mode "config" is gunicorn.conf.py with these settings.
VARIANTS = [
    ("sync", "sync", {}),
    ("gthread 4 threads", "config", {"WEB_THREADS": "4"}),
    ("gthread 8 threads", "config", {"WEB_THREADS": "8"}),
    ("gthread 16 threads", "config", {"WEB_THREADS": "16"}),
    ("gthread 32 threads", "config", {"WEB_THREADS": "32"}),
    ("gthread 16, switch 5 ms", "config", {"RELAY_SWITCH_INTERVAL": "0.005"}),
    ("gthread 16, switch 0.2 ms", "config", {"RELAY_SWITCH_INTERVAL": "0.0002"}),
]


@dataclass(frozen=True)
class Params:
    messages: int = 40_000
    rounds: int = 3
    round_s: float = 10.0
    warmup_s: float = 2.0
    threads: int = 2
    connections: int = 8


QUICK = Params(messages=10_000, rounds=2, round_s=3.0, warmup_s=1.0)


def run(wrk: str, workdir: Path, quick: bool = False, log=print) -> dict:
    """Every variant and both baselines, alternating rounds; medians per variant."""
    params = QUICK if quick else Params()
    database, corpus = ingest.prepare(workdir, params.messages, log)
    creds = Credentials()
    servers: dict[str, Gunicorn] = {
        "bare sync": Gunicorn("bare-sync", "bench.bare_app:app", base_env(), workdir),
        "bare gthread 16 threads": Gunicorn(
            "bare-gthread", "bench.bare_app:app", base_env(), workdir, mode="gthread"
        ),
    }
    for i, (name, mode, env) in enumerate(VARIANTS):
        servers[name] = ingest.start_relay(database, workdir, creds, f"relay-{i}", mode, **env)
    relays = [name for name, _, _ in VARIANTS]
    stored = lambda: ingest.seed.count(database, "callback_events")  # noqa: E731
    try:
        for name, server in servers.items():
            server.wait_ready("/healthz" if name in relays else "/callbacks/catapult")
        offsets = dict.fromkeys(servers, 0)
        rows: dict[str, list[dict]] = {name: [] for name in servers}
        for number in range(params.rounds + 1):  # round 0: the warm-up
            for name, server in servers.items():
                pids = [server.pid, *server.workers()]
                cpu_before = cpu_seconds(pids)
                before = stored() if name in relays else 0
                result = run_wrk(
                    wrk,
                    server.url,
                    corpus,
                    seconds=params.round_s if number else params.warmup_s,
                    offset=offsets[name],
                    auth=creds.callback_auth,
                    threads=params.threads,
                    connections=params.connections,
                )
                offsets[name] += result["sent"]
                if not number:
                    continue
                check = ingest._check(stored, before, result) if name in relays else None
                rows[name].append(
                    {
                        "rps": result["rps"],
                        "p99_ms": result["latency_ms"]["p99"],
                        "non2xx": result["non2xx"],
                        "cpu_ms": (cpu_seconds(pids) - cpu_before) * 1000 / max(1, result["sent"]),
                        "exact": None if check is None else check["exact"],
                    }
                )
                log(f"workers: round {number} {name}: {result['rps']:.0f} req/s")
    finally:
        for server in servers.values():
            server.stop()
    summary = {
        name: {
            "rps": statistics.median(r["rps"] for r in got),
            "p99_ms": statistics.median(r["p99_ms"] for r in got),
            "cpu_ms": statistics.median(r["cpu_ms"] for r in got),
            "non2xx": sum(r["non2xx"] for r in got),
            "exact": all(r["exact"] is not False for r in got),
        }
        for name, got in rows.items()
    }
    return {"params": asdict(params), "summary": summary, "rounds": rows}


def markdown(result: dict) -> str:
    """One table: every variant's throughput against the better bare baseline and sync."""
    s, p = result["summary"], result["params"]
    bare = max(s["bare sync"]["rps"], s["bare gthread 16 threads"]["rps"])
    sync = s["sync"]["rps"]
    out = [
        "## Worker model (callback ingest, SQLite)",
        "",
        f"wrk -t{p['threads']} -c{p['connections']}, {p['rounds']} alternating rounds of "
        f"{p['round_s']:g} s per variant (medians), 2 workers each. `gthread N` is "
        "`gunicorn.conf.py` with `WEB_THREADS=N` (switch interval 1 ms unless said); ratios "
        "are against the better bare baseline and against the relay under sync workers.",
        "",
        "| variant | req/s | / bare | / sync | p99 ms | CPU ms/req | non-2xx | every 2xx stored |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in s.items():
        exact = "" if name.startswith("bare") else ("yes" if row["exact"] else "NO")
        out.append(
            f"| {name} | {row['rps']:,.0f} | {row['rps'] / bare:.2f}x | {row['rps'] / sync:.2f}x "
            f"| {row['p99_ms']:.1f} | {row['cpu_ms']:.2f} | {row['non2xx']} | {exact} |"
        )
    return "\n".join(out) + "\n"
