"""Callback ingest: the relay's real callback endpoint against a bare Flask endpoint.

Each side runs its best gunicorn settings for the same worker count (2): the relay its own
gunicorn.conf.py, the bare app the better of sync and gthread workers; the relay's code also
runs under sync workers (the settings it had before), and two floors run beside them. All get
the same wrk load, alternately, from a corpus of ``sent`` events and delivery receipts (POST
JSON and GET query) for messages that exist in the relay's database. After each relay round
the stored events are counted: every 2xx must be a committed event.
"""

from __future__ import annotations

import resource
import shutil
import sqlite3
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import floor, pg, seed
from .loadgen import run_wrk
from .servers import (
    Credentials,
    Gunicorn,
    base_env,
    cpu_seconds,
    listen_socket,
    memory_mb,
    migrate,
    relay_env,
)

TARGET_RATIO = 0.5
TARGET_RATIO_PG = 0.4
TARGET_P99_MS = 50.0
TARGET_RSS_MB = 100.0


@dataclass(frozen=True)
class Params:
    messages: int = 40_000  # accepted messages seeded; two events each in the corpus
    rounds: int = 3
    round_s: float = 10.0
    warmup_s: float = 3.0
    threads: int = 2
    connections: int = 8
    paced_rate: float = 500.0
    paced_connections: int = 10
    paced_s: float = 10.0
    floor_count: int = 3000  # callbacks sent one at a time in process (floor.py)


QUICK = Params(messages=10_000, rounds=2, round_s=2.0, warmup_s=1.0, paced_s=2.0, floor_count=1000)


def _stored(database: Path) -> int:
    return seed.count(database, "callback_events")


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (each wrk run, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _round_row(app: str, number: int, result: dict) -> dict:
    latency = result["latency_ms"]
    return {
        "app": app,
        "round": number,
        "rps": round(result["rps"], 1),
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "max_ms": latency["max"],
        "sent": result["sent"],
        "ok": result["ok"],
        "non2xx": result["non2xx"],
        "socket_errors": sum(v for k, v in result["errors"].items() if k != "status"),
        "in_flight": result["in_flight"],
        "cpu_ms": round(result["cpu_ms"], 3),
        "wrk_cores": round(result["wrk_cores"], 2),
        **({"db_cpu_ms": round(result["db_cpu_ms"], 3)} if "db_cpu_ms" in result else {}),
    }


def _check(stored, before: int, result: dict) -> dict:
    """Every request wrk sent is a committed event: the 2xx it saw answered, plus the few it
    abandoned in flight when its time was up (the relay still stores those)."""
    time.sleep(0.5)  # let the abandoned requests finish their commit
    delta = stored() - before
    return {
        "stored": delta,
        "ok": result["ok"],
        "non2xx": result["non2xx"],
        "in_flight": result["in_flight"],
        "exact": delta == result["ok"] + result["in_flight"] and result["non2xx"] == 0,
    }


def _event_mix(database: Path, after_id: int) -> dict:
    con = sqlite3.connect(database)
    try:
        row = con.execute(
            "SELECT count(*), sum(applied), sum(duplicate), sum(late), sum(parked), "
            "sum(unparseable), sum(method = 'GET') FROM callback_events WHERE id > ?",
            (after_id,),
        ).fetchone()
    finally:
        con.close()
    keys = ("events", "applied", "duplicate", "late", "parked", "unparseable", "get")
    return {k: v or 0 for k, v in zip(keys, row, strict=True)}


def prepare(workdir: Path, messages: int, log=print) -> tuple[Path, Path]:
    """A migrated database with ``messages`` accepted messages, and the corpus of their events."""
    database = workdir / "ingest.sqlite3"
    migrate(database)
    seeded = seed.seed_accepted(database, messages)
    corpus = workdir / "callbacks.txt"
    lines = seed.write_callback_corpus(corpus, seeded)
    log(f"ingest: {messages:,} accepted messages seeded, corpus of {lines:,} events")
    return database, corpus


def start_relay(
    database: Path,
    workdir: Path,
    creds: Credentials,
    name: str = "relay",
    mode: str = "config",
    **extra: str,
) -> Gunicorn:
    """The relay under gunicorn (by default its own gunicorn.conf.py), its PUBLIC_BASE_URL its
    own address."""
    sock = listen_socket()
    public = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = relay_env(database, creds, public, **extra)
    return Gunicorn(name, "wsgi:app", env, workdir, sock, mode=mode)


def subscribe(database: Path) -> None:
    """One enabled webhook endpoint subscribed to every event: each status change the
    callbacks make then writes its outbox row (no worker runs here: ``DISPATCH=off``, so
    the rows stay pending and only the callback path's cost is measured)."""
    con = sqlite3.connect(database)
    try:
        con.execute(
            "INSERT INTO webhook_endpoints (id, url, description, events, secret, enabled, "
            "created_at, updated_at) VALUES ('wh-bench', 'https://93.184.215.14/hook', "
            "'bench', '[\"*\"]', 'whsec_AAAA', 1, '2026-01-01 00:00:00.000000', "
            "'2026-01-01 00:00:00.000000')"
        )
        con.commit()
    finally:
        con.close()


def run(wrk: str, workdir: Path, quick: bool = False, log=print, webhook: bool = False) -> dict:
    """SQLite: seed, both servers, alternating rounds, 500/s, memory, then the in-process
    decomposition (floor.py). ``webhook``: with an endpoint subscribed to every event."""
    params = QUICK if quick else Params()
    database, corpus = prepare(workdir, params.messages, log)
    if webhook:
        subscribe(database)
        log("ingest: a webhook endpoint subscribed to every event")
    pristine = workdir / "ingest-pristine.sqlite3"
    shutil.copyfile(database, pristine)  # for the in-process decomposition at the end
    result = measure(
        wrk,
        workdir,
        params,
        corpus,
        database,
        stored=lambda: _stored(database),
        log=lambda message: log(f"ingest: {message}"),
    )
    result["event_mix"] = _event_mix(database, result.pop("first_id"))
    result["webhook_deliveries"] = seed.count(database, "webhook_deliveries")
    log("ingest: one callback at a time, in process ...")
    result["layers"] = floor.measure(pristine, corpus, workdir, params.floor_count)
    return result


def run_pg(wrk: str, workdir: Path, quick: bool = False, log=print) -> dict:
    """The same on a throwaway PostgreSQL cluster with durable settings (bench/pg.py)."""
    params = QUICK if quick else Params()

    def say(message: str) -> None:
        log(f"ingest-pg: {message}")

    with pg.Cluster() as cluster:
        url = cluster.start()
        settings = cluster.describe()
        say(
            f"PostgreSQL {settings['version']} on 127.0.0.1:{cluster.port} "
            + ", ".join(f"{k}={settings[k]}" for k in pg.DURABILITY)
        )
        unused = workdir / "unused.sqlite3"  # DATABASE_URL below wins over relay_env's SQLite
        migrate(unused, database_url=url)
        seeded = cluster.seed_accepted(params.messages)
        corpus = workdir / "callbacks-pg.txt"
        lines = seed.write_callback_corpus(corpus, seeded)
        say(f"{params.messages:,} accepted messages seeded, corpus of {lines:,} events")
        events_before, activity_before = cluster.count(), cluster.activity()
        result = measure(
            wrk,
            workdir,
            params,
            corpus,
            unused,
            stored=cluster.count,
            log=say,
            mark=cluster.max_event_id,
            db_cpu=cluster.cpu,
            # The seed leaves callback_events empty, and a plan that PostgreSQL caches while a
            # table looks empty can scan it whole for as long as the connection lives. A live
            # relay's autovacuum analyses the table within a minute of the first inserts
            # (which also drops such plans); the benchmark does that once, after the warm-up.
            after_warmup=cluster.analyze,
            DATABASE_URL=url,
        )
        result["event_mix"] = cluster.event_mix(result.pop("first_id"))
        # The relay has stopped: its backends have exited and flushed their statistics.
        time.sleep(0.5)
        # The database floor's rows are events too: its server activity is in the same counters.
        events = max(1, cluster.count() - events_before + cluster.count("durable_floor_events"))
        activity = cluster.activity()
        result["per_event"] = {
            key: round((activity[key] - activity_before[key]) / events, 3) for key in activity
        }
        result["postgres"] = settings
    return result


def measure(
    wrk: str,
    workdir: Path,
    params: Params,
    corpus: Path,
    database: Path,
    stored,
    log=print,
    mark=None,
    db_cpu=None,
    after_warmup=None,
    **relay_extra: str,
) -> dict:
    """Start both servers, alternate the rounds, pace at 500/s, read worker memory.

    ``stored()`` counts the relay's callback events; ``mark()`` (default ``stored``) is the
    last event id before the measured runs (``first_id`` in the result); ``db_cpu()`` (a
    database server's CPU seconds so far), when given, adds its CPU per request to each run."""
    creds = Credentials()
    # The relay with its own gunicorn.conf.py, and the same code with the sync workers (-w 2)
    # the relay ran before the threaded workers: the worker model is chosen on these figures.
    relay = start_relay(database, workdir, creds, **relay_extra)
    relay_sync = start_relay(database, workdir, creds, "relay-sync", "sync", **relay_extra)
    bare = Gunicorn("bare", "bench.bare_app:app", base_env(), workdir)
    bare_threaded = Gunicorn(
        "bare-gthread", "bench.bare_app:app", base_env(), workdir, mode="gthread"
    )
    floor_db = workdir / "durable-floor.sqlite3"
    for stale in workdir.glob("durable-floor.sqlite3*"):
        stale.unlink()
    floor_env = {**base_env(), "DURABLE_FLOOR_DATABASE": str(floor_db)}
    if relay_extra.get("DATABASE_URL"):  # PostgreSQL: the floor commits to the same server
        floor_env["DURABLE_FLOOR_URL"] = relay_extra["DATABASE_URL"]
    durable = Gunicorn("durable", "bench.durable_app:app", floor_env, workdir)
    journal = Gunicorn(
        "journal",
        "bench.journal_app:app",
        {**base_env(), "JOURNAL_FLOOR_FOLDER": str(workdir)},
        workdir,
    )
    with relay, relay_sync, bare, bare_threaded, journal, durable:
        for server in (relay, relay_sync):
            server.wait_ready("/healthz")
        for server in (bare, bare_threaded, journal, durable):
            server.wait_ready("/callbacks/catapult")
        servers = {
            "bare": bare,
            "bare-gthread": bare_threaded,
            "journal": journal,
            "durable": durable,
            "relay-sync": relay_sync,
            "relay": relay,
        }
        relays = ("relay", "relay-sync")
        offsets = dict.fromkeys(servers, 0)

        def load(name: str, seconds: float, **kwargs) -> dict:
            server = servers[name]
            pids = [server.pid, *server.workers()]
            cpu_before, wrk_before = cpu_seconds(pids), _children_cpu()
            db_before = db_cpu() if db_cpu else 0.0
            result = run_wrk(
                wrk,
                servers[name].url,
                corpus,
                seconds=seconds,
                offset=offsets[name],
                auth=creds.callback_auth,
                **kwargs,
            )
            offsets[name] += result["sent"]
            # CPU the server's processes spent per request, and the cores wrk itself used.
            sent = max(1, result["sent"])
            result["cpu_ms"] = (cpu_seconds(pids) - cpu_before) * 1000 / sent
            result["wrk_cores"] = (_children_cpu() - wrk_before) / max(1e-9, seconds)
            if db_cpu:
                result["db_cpu_ms"] = (db_cpu() - db_before) * 1000 / sent
            return result

        unloaded = {"threads": params.threads, "connections": params.connections}
        for name in servers:  # warm-up: imports, first connections, database page cache
            load(name, params.warmup_s, **unloaded)
        if after_warmup:
            after_warmup()
        first_id = (mark or stored)()
        rounds, checks = [], []
        for number in range(1, params.rounds + 1):
            for name in servers:
                before = stored() if name in relays else 0
                result = load(name, params.round_s, **unloaded)
                rounds.append(_round_row(name, number, result))
                if name in relays:
                    checks.append({"round": f"{number} {name}", **_check(stored, before, result)})
                log(
                    f"round {number} {name}: {result['rps']:.0f} req/s, "
                    f"p99 {result['latency_ms']['p99']:.1f} ms, non-2xx {result['non2xx']}"
                )
        # Each side's better baseline: bare Flask under sync or gthread workers, whichever
        # went faster in the rounds above.
        best_bare = max(
            ("bare", "bare-gthread"),
            key=lambda n: statistics.median(r["rps"] for r in rounds if r["app"] == n),
        )
        paced = {}
        for name in (best_bare, "relay"):  # the 500/s latency target concerns these two
            before = stored() if name == "relay" else 0
            result = load(
                name,
                params.paced_s,
                threads=params.threads,
                connections=params.paced_connections,
                rate=params.paced_rate,
            )
            paced["bare" if name == best_bare else name] = _round_row(name, 0, result)
            if name == "relay":
                checks.append({"round": "paced", **_check(stored, before, result)})
            p99 = result["latency_ms"]["p99"]
            log(f"paced {name}: {result['rps']:.0f} req/s, p99 {p99:.1f} ms")
        memory = {
            name: [{"pid": pid, **memory_mb(pid)} for pid in server.workers()]
            for name, server in servers.items()
        }

    summary = {}
    for name in servers:
        mine = [r for r in rounds if r["app"] == name]
        summary[name] = {
            "rps": statistics.median(r["rps"] for r in mine),
            "p50_ms": statistics.median(r["p50_ms"] for r in mine),
            "p99_ms": statistics.median(r["p99_ms"] for r in mine),
            "cpu_ms": statistics.median(r["cpu_ms"] for r in mine),
            "wrk_cores": statistics.median(r["wrk_cores"] for r in mine),
            "non2xx": sum(r["non2xx"] for r in mine),
            "socket_errors": sum(r["socket_errors"] for r in mine),
        }
        if db_cpu:
            summary[name]["db_cpu_ms"] = statistics.median(r["db_cpu_ms"] for r in mine)
    summary["bare-sync"], summary["bare"] = summary["bare"], summary[best_bare]
    return {
        "params": asdict(params),
        "rounds": rounds,
        "summary": summary,
        "servers": {name: server.description for name, server in servers.items()},
        "best_bare": best_bare,
        "ratio": summary["relay"]["rps"] / summary["bare"]["rps"],
        "sync_ratio": summary["relay-sync"]["rps"] / summary["bare"]["rps"],
        "durable_ratio": summary["durable"]["rps"] / summary["bare"]["rps"],
        "journal_ratio": summary["journal"]["rps"] / summary["bare"]["rps"],
        "paced": paced,
        "checks": checks,
        "memory": memory,
        "first_id": first_id,
    }


# ------------------------------------------------------------------ report


def _mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def _tables(result: dict, heading: str, note: str, target: float) -> list[str]:
    """Figures, per-round detail, commit checks and the event mix of one ingest run."""
    p, s, paced = result["params"], result["summary"], result["paced"]
    bare, journal, floor_, relay = s["bare"], s["journal"], s["durable"], s["relay"]
    relay_sync = s["relay-sync"]
    servers = result["servers"]
    floor_where = (
        "in the same PostgreSQL server (its own table, one connection per worker)"
        if "db_cpu_ms" in relay
        else "in its own SQLite database with the relay's settings (WAL, `synchronous=FULL`, "
        "writers queued on `flock`)"
    )
    ratio = result["ratio"]
    relay_paced, bare_paced = paced["relay"], paced["bare"]
    non2xx = relay["non2xx"] + relay_sync["non2xx"] + relay_paced["non2xx"]
    exact = all(c["exact"] for c in result["checks"])
    rss = {
        name: max((w["rss_mb"] or 0) for w in workers) if workers else 0
        for name, workers in result["memory"].items()
    }
    columns = (bare, journal, floor_, relay_sync, relay)

    def row(label: str, key: str, fmt: str, target_cells: str = "| | |") -> str:
        cells = " | ".join(format(x[key], fmt) for x in columns)
        return (
            f"| {label} | {cells} | {relay[key] / bare[key]:.2f}x | "
            f"{relay[key] / relay_sync[key]:.2f}x | {relay[key] / floor_[key]:.2f}x "
            f"{target_cells}"
        )

    def blank(cells: dict[int, str]) -> str:
        return " | ".join(cells.get(i, "") for i in range(len(columns)))

    best = result["best_bare"]
    out = [
        heading,
        "",
        f"{note}wrk -t{p['threads']} -c{p['connections']}, {p['rounds']} alternating rounds of "
        f"{p['round_s']:g} s per app (medians shown); paced: -c{p['paced_connections']} at "
        f"{p['paced_rate']:g} req/s for {p['paced_s']:g} s. No access logs. "
        f"**relay**: its own `gunicorn.conf.py` ({servers['relay']}); **relay, sync workers**: "
        f"the same code under `{servers['relay-sync']}` (the relay's settings before the "
        f"threaded workers); **bare Flask**: the better of `{servers['bare']}` "
        f"({s['bare-sync']['rps']:,.0f} req/s) and `{servers['bare-gthread']}` "
        f"({s['bare-gthread']['rps']:,.0f} req/s), this run `{servers[best]}`; floors: "
        f"`{servers['journal']}`.",
        "",
        "| figure | bare Flask | journal floor | database floor | relay, sync workers | relay "
        "| relay / bare | relay / sync workers | relay / database floor | target | |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        row(
            "throughput (req/s)", "rps", ",.0f", f"| ≥ {target}x bare | {_mark(ratio >= target)} |"
        ).replace(f"| {ratio:.2f}x |", f"| **{ratio:.2f}x** |", 1),
        row("p50 latency, unpaced (ms)", "p50_ms", ".2f"),
        row("p99 latency, unpaced (ms)", "p99_ms", ".2f"),
        row("server CPU per request, unpaced (ms, master + workers)", "cpu_ms", ".2f"),
        *(
            [
                "| database server CPU per request, unpaced (ms, all PostgreSQL processes) | "
                + blank(
                    {
                        2: f"{floor_['db_cpu_ms']:.2f}",
                        3: f"{relay_sync['db_cpu_ms']:.2f}",
                        4: f"{relay['db_cpu_ms']:.2f}",
                    }
                )
                + f" | | {relay['db_cpu_ms'] / max(relay_sync['db_cpu_ms'], 1e-9):.2f}x | "
                f"{relay['db_cpu_ms'] / max(floor_['db_cpu_ms'], 1e-9):.2f}x | | |"
            ]
            if "db_cpu_ms" in relay
            else []
        ),
        "| cores used by wrk itself, unpaced | "
        + " | ".join(f"{x['wrk_cores']:.2f}" for x in columns)
        + " | | | | | |",
        f"| achieved rate at ~{p['paced_rate']:g}/s offered | "
        + blank({0: f"{bare_paced['rps']:,.0f}", 4: f"{relay_paced['rps']:,.0f}"})
        + " | | | | | |",
        f"| p99 latency at ~{p['paced_rate']:g}/s (ms) | "
        + blank({0: f"{bare_paced['p99_ms']:.2f}", 4: f"{relay_paced['p99_ms']:.2f}"})
        + f" | {relay_paced['p99_ms'] / bare_paced['p99_ms']:.2f}x | | | "
        f"< {TARGET_P99_MS:g} ms | {_mark(relay_paced['p99_ms'] < TARGET_P99_MS)} |",
        "| non-2xx answers (all rounds) | "
        + blank(
            {
                0: str(bare["non2xx"] + bare_paced["non2xx"]),
                1: str(journal["non2xx"]),
                2: str(floor_["non2xx"]),
                3: str(relay_sync["non2xx"]),
                4: str(relay["non2xx"] + relay_paced["non2xx"]),
            }
        )
        + f" | | | | 0 | {_mark(non2xx == 0)} |",
        "| every 2xx committed (stored Δ = 2xx + abandoned) | "
        + blank({3: "yes" if exact else "NO", 4: "yes" if exact else "NO"})
        + f" | | | | exact | {_mark(exact)} |",
        "| worker RSS after ingest (MB, max) | "
        + blank(
            {
                0: f"{rss[best]:.1f}",
                1: f"{rss['journal']:.1f}",
                2: f"{rss['durable']:.1f}",
                3: f"{rss['relay-sync']:.1f}",
                4: f"{rss['relay']:.1f}",
            }
        )
        + f" | | | | < {TARGET_RSS_MB:g} MB | {_mark(rss['relay'] < TARGET_RSS_MB)} |",
        "",
        "Two floors run in the same rotation. The **journal floor** (`bench/journal_app.py`) is "
        "the bare endpoint plus the cheapest durable write this disk allows for one request "
        "at a time: the raw event written into a preallocated file of the worker's own and "
        "`fdatasync`ed before the 200 (no database, no index, no shared lock). The **database "
        f"floor** (`bench/durable_app.py`) is the bare endpoint plus one raw INSERT committed "
        f"{floor_where} before the 200. Both pay one flush per request; the relay's threaded "
        "workers commit the callbacks that arrive together in one transaction (one flush per "
        "batch), which is how it can pass them. This run: journal floor / bare = "
        f"**{result['journal_ratio']:.2f}x**, database floor / bare = "
        f"**{result['durable_ratio']:.2f}x**, relay with sync workers / bare = "
        f"**{result['sync_ratio']:.2f}x**.",
        "",
        "| round | app | req/s | p50 ms | p99 ms | max ms | 2xx | non-2xx | socket errors "
        "| CPU ms/req | wrk cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    db = "db_cpu_ms" in relay
    if db:  # one more column: the database server's CPU per request
        out[-2] = out[-2].replace("| wrk cores |", "| DB CPU ms/req | wrk cores |")
        out[-1] += "---:|"
    for r in [*result["rounds"], paced["bare"], paced["relay"]]:
        label = r["round"] or "paced"
        db_cell = f"{r['db_cpu_ms']:.2f} | " if db else ""
        out.append(
            f"| {label} | {r['app']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['ok']:,} | {r['non2xx']} | "
            f"{r['socket_errors']} | {r['cpu_ms']:.2f} | {db_cell}{r['wrk_cores']:.2f} |"
        )
    out += [
        "",
        "Commit check (relay): events stored during each run = 2xx answers wrk received "
        "+ requests wrk abandoned in flight when its time was up (it stops without waiting "
        "for them; the relay still commits them). Equality means every 2xx was committed.",
        "",
        "| run | stored Δ | 2xx | abandoned in flight | non-2xx | exact |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for c in result["checks"]:
        out.append(
            f"| {c['round']} | {c['stored']:,} | {c['ok']:,} | {c['in_flight']} | "
            f"{c['non2xx']} | {_mark(c['exact'])} |"
        )
    mix = result["event_mix"]
    out += [
        "",
        f"Relay events stored in the measured runs: {mix['events']:,} "
        f"(applied {mix['applied']:,}, duplicate {mix['duplicate']:,}, late {mix['late']:,}, "
        f"parked {mix['parked']:,}, unparseable {mix['unparseable']:,}; GET {mix['get']:,})."
        + (
            f" Webhook outbox rows written (one endpoint subscribed to every event): "
            f"{result['webhook_deliveries']:,}."
            if result.get("webhook_deliveries")
            else ""
        ),
    ]
    return out


def markdown(result: dict) -> str:
    """The SQLite ingest tables, the in-process decomposition and the workers' memory."""
    out = _tables(result, "## Callback ingest (SQLite)", "", TARGET_RATIO)
    out += [
        "",
        floor.markdown(result["layers"], result["params"]["floor_count"]).rstrip(),
        "",
        "## Memory",
        "",
        f"Each gunicorn worker after the ingest runs (/proc/<pid>/status); target < "
        f"{TARGET_RSS_MB:g} MB for the relay's.",
        "",
        "| worker | pid | VmRSS MB | VmHWM (peak) MB |",
        "|---|---:|---:|---:|",
    ]
    for name in ("relay", "relay-sync", "durable", "journal", "bare", "bare-gthread"):
        for w in result["memory"][name]:
            out.append(f"| {name} | {w['pid']} | {w['rss_mb']} | {w['peak_mb']} |")
    return "\n".join(out) + "\n"


def markdown_pg(result: dict) -> str:
    """The PostgreSQL ingest tables."""
    pg_info = result["postgres"]
    note = (
        f"PostgreSQL {pg_info['version']} (throwaway cluster on loopback TCP, default settings: "
        + ", ".join(f"{k}={pg_info[k]}" for k in pg.DURABILITY)
        + "), the same seed, corpus, servers and runs as the SQLite section. "
    )
    out = _tables(result, "## Callback ingest (PostgreSQL)", note, TARGET_RATIO_PG)
    per = result["per_event"]
    out += [
        "",
        "Per stored event, over all relay and durable-floor runs (warm-up included; "
        "pg_stat_database, "
        f"pg_stat_wal): {per['commits']:g} commits, {per['rollbacks']:g} rollbacks, "
        f"{per['wal_records']:g} WAL records ({per['wal_fpi']:g} full-page images), "
        f"{per['wal_bytes']:,.0f} WAL bytes, {per['wal_syncs']:g} WAL fsyncs.",
    ]
    return "\n".join(out) + "\n"
