"""``python -m bench.profile``: where the relay's callback endpoint spends its time under load.

Seeds the ingest database, starts the relay under gunicorn (the ingest benchmark's settings),
loads it with the ingest corpus and samples both workers with py-spy twice: on-CPU only, and
wall clock (``--idle``: also waiting on the disk, the SQLite write lock, the network). Only
samples taken inside a request (gunicorn's ``handle``) count. Prints the share of request
time per layer, per app source line and per function, and writes a flame graph.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from . import ingest
from .loadgen import ensure_wrk, run_wrk
from .seed import CACHE
from .servers import BIN, ROOT, BenchError, Credentials, stop_all

RESULTS = Path(__file__).resolve().parent / "results"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Samples that count: inside gunicorn's per-connection handler (any worker class), or in the
# callback writer thread that commits the batches (app/batching.py).
IN_REQUEST = ("handle (gunicorn/workers/", "_run (app/batching.py")


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if not found:
        raise BenchError(
            "bench.profile needs py-spy: `.venv/bin/pip install py-spy` (and ptrace rights)."
        )
    return found


def _frames(stack: str) -> list[tuple[str, str, str]]:
    """(function, short file, line) per frame, outermost first; process/thread frames dropped.
    Files are shown relative to site-packages, the stdlib or the project (``app/...``)."""
    out = []
    for frame in stack.split(";"):
        match = FRAME.match(frame)
        if match is None:
            continue
        path = match["file"]
        for marker in ("site-packages/", "lib/python3.11/", f"{ROOT}/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        out.append((match["func"], path, match["line"] or ""))
    return out


LAYERS = (  # (innermost function suffix, file prefix, layer): first match wins
    ("do_commit", "sqlalchemy/", "SQLite COMMIT (C: WAL write + fsync, synchronous=FULL)"),
    ("acquire_write_lock", "app/", "waiting for the write lock (flock, app/db_setup.py)"),
    ("release_write_lock", "app/", "releasing the write lock (flock, app/db_setup.py)"),
    ("close_graceful", "gunicorn/", "gunicorn close_graceful (lingers for the client's FIN)"),
    ("write", "gunicorn/util.py", "gunicorn socket write of the answer"),
    ("", "gunicorn/", "gunicorn (accept, HTTP parsing, socket reads)"),
    ("", "sqlalchemy/", "SQLAlchemy Python (execute, compile cache, params, rows, pool)"),
    ("", "flask/", "Flask / Werkzeug"),
    ("", "werkzeug/", "Flask / Werkzeug"),
    ("", "flask_sqlalchemy/", "Flask / Werkzeug"),
    ("", "prometheus_client/", "prometheus_client (metrics)"),
    ("", "app/", "relay code (app/)"),
    ("", "json/", "json"),
)


def layer(frames: list[tuple[str, str, str]]) -> str:
    """What a sample's time is spent on, from its innermost frame. SQLite's C calls show as
    time in SQLAlchemy's ``do_execute``: split by what the app was running."""
    func, path, _ = frames[-1]
    if func.endswith("do_execute") and path.startswith("sqlalchemy/"):
        names = {f.rsplit(".", 1)[-1] for f, _, _ in frames}
        if "lock_for_write" in names:
            return "SQLite BEGIN IMMEDIATE (C)"
        return "SQLite SELECT/INSERT/UPDATE (C)"
    # The callback path calls the DBAPI itself: BEGIN IMMEDIATE and COMMIT in
    # db_setup.write_transaction, the statements in receive.Prepared.execute / .first.
    if func.endswith("write_transaction") and path == "app/db_setup.py":
        return "SQLite BEGIN IMMEDIATE + COMMIT (C: WAL write + fsync, synchronous=FULL)"
    if func.endswith(("Prepared.execute", "Prepared.first")) and path == "app/receive.py":
        return "SQLite SELECT/INSERT/UPDATE (C)"
    for suffix, prefix, name in LAYERS:
        if func.endswith(suffix) and path.startswith(prefix):
            return name
    return "other Python (stdlib: email headers, urllib, socket, ...)"


def analyse(raw: Path, top: int = 15) -> dict:
    """Shares of in-request samples per layer, per app line and per function."""
    layers, lines, inclusive, own = Counter(), Counter(), Counter(), Counter()
    total = 0
    for entry in raw.read_text().splitlines():
        stack, _, count = entry.rpartition(" ")
        if not any(marker in stack for marker in IN_REQUEST) or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        handle = next(
            i
            for i, f in enumerate(frames)
            if f[0].endswith(("Worker.handle", "GroupWriter._run"))
            or (f[0] == "handle" and "gunicorn/workers/" in f[1])
            or (f[0] == "_run" and "app/batching.py" in f[1])
        )
        frames = frames[handle:]  # from gunicorn's per-connection handler inwards
        total += n
        layers[layer(frames)] += n
        func, path, _ = frames[-1]
        own[f"{func} ({path})"] += n
        for name in {f"{f} ({p})" for f, p, _ in frames[1:]}:
            inclusive[name] += n
        app = [f for f in frames if f[1].startswith("app/")]
        if app:
            f, p, ln = app[-1]
            lines[f"{p}:{ln} {f}"] += n
        else:
            lines["(outside app/: gunicorn, Flask before/after the view)"] += n
    share = {k: v / total for k, v in layers.most_common()} if total else {}
    return {
        "samples": total,
        "layers": share,
        "app_lines": {k: v / total for k, v in lines.most_common(top)},
        "inclusive": {k: v / total for k, v in inclusive.most_common(top * 2)},
        "self": {k: v / total for k, v in own.most_common(top)},
    }


def record(spy: str, pid: int, out: Path, seconds: int, fmt: str, idle: bool) -> subprocess.Popen:
    args = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--rate",
        "200",
        "--duration",
        str(seconds),
        "--format",
        fmt,
        "--output",
        str(out),
        "--nonblocking",
    ]
    return subprocess.Popen(
        [*args, "--idle"] if idle else args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def markdown(results: dict, loads: dict) -> str:
    out = ["# Profile of the callback endpoint (py-spy, both gunicorn workers)", ""]
    for mode, title in (
        ("wall", "wall clock (py-spy --idle: waits included)"),
        ("cpu", "active threads only (py-spy default: samples it sees idle are dropped)"),
    ):
        r, load = results[mode], loads[mode]
        out += [
            f"## {title}: {r['samples']:,} in-request samples, relay at "
            f"{load['rps']:,.0f} req/s while sampled",
            "",
            "| layer | share of request time |",
            "|---|---:|",
        ]
        out += [f"| {k} | {v:.1%} |" for k, v in r["layers"].items()]
        out += [
            "",
            "| app line (innermost app/ frame, everything below included) | share |",
            "|---|---:|",
        ]
        out += [f"| `{k}` | {v:.1%} |" for k, v in r["app_lines"].items()]
        out += ["", "| function (self time) | share |", "|---|---:|"]
        out += [f"| `{k}` | {v:.1%} |" for k, v in r["self"].items()]
        out += ["", "| function (inclusive) | share |", "|---|---:|"]
        out += [f"| `{k}` | {v:.1%} |" for k, v in r["inclusive"].items()]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=int, default=15, help="length of each recording")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="profile-", dir=CACHE))
    try:
        wrk, spy = ensure_wrk(), py_spy()
        database, corpus = ingest.prepare(workdir, 60_000, log=_log)
        creds = Credentials()
        relay = ingest.start_relay(database, workdir, creds)
        results, loads, offset = {}, {}, 0
        with relay:
            relay.wait_ready("/healthz")
            load = {"threads": 2, "connections": 8, "auth": creds.callback_auth}
            offset += run_wrk(wrk, relay.url, corpus, seconds=2, **load)["sent"]
            RESULTS.mkdir(exist_ok=True)
            for mode, fmt, out in (
                ("cpu", "raw", workdir / "cpu.txt"),
                ("wall", "raw", workdir / "wall.txt"),
                ("svg", "flamegraph", RESULTS / "profile.svg"),
            ):
                spy_proc = record(spy, relay.pid, out, args.seconds, fmt, idle=mode == "wall")
                time.sleep(1.0)  # attach to the master and its workers
                result = run_wrk(
                    wrk, relay.url, corpus, seconds=args.seconds - 2, offset=offset, **load
                )
                offset += result["sent"]
                _, err = spy_proc.communicate(timeout=args.seconds + 60)
                if spy_proc.returncode != 0 or not out.exists():
                    raise BenchError(f"py-spy failed ({spy_proc.returncode}):\n{err}")
                if mode != "svg":
                    results[mode], loads[mode] = analyse(out), result
                _log(f"profile: {mode} recorded at {result['rps']:,.0f} req/s")
        text = markdown(results, loads)
        (RESULTS / "profile.md").write_text(text)
        print(text)
        _log("profile: bench/results/profile.md and profile.svg written")
        return 0
    except BenchError as exc:
        _log(str(exc))
        return 2
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
