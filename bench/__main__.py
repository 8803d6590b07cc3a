"""``python -m bench [ingest|ingest-pg|api|dispatch|prune|workers|all] [--quick]``: run, print
markdown (``workers`` runs on request only).

Results go to ``bench/results/latest.{md,json}`` (``quick.*`` with --quick; a ``-<name>``
suffix when one benchmark runs alone). Benchmarks report; they never fail on a missed target.
Every server they start is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import api_scale, dispatch, ingest, machine, prune, workers
from .loadgen import ensure_wrk, wrk_version
from .seed import CACHE
from .servers import BenchError, stop_all

RESULTS = Path(__file__).resolve().parent / "results"
NEEDS_WRK = {"ingest", "ingest-pg", "api", "prune", "workers"}
# Run on request only (not part of "all"): how gunicorn.conf.py's settings were chosen.
EXTRA = ["workers"]
BENCHMARKS = ["ingest", "ingest-pg", "api", "dispatch", "prune"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _machine_markdown(info: dict, args: argparse.Namespace, seconds: float) -> str:
    rows = [
        ("date (UTC)", info["date"]),
        ("CPU", info["cpu"]),
        ("cores", f"{info['cores']} ({info['cores_usable']} usable)"),
        ("memory", f"{info['memory_gib']} GiB"),
        ("OS", info["os"]),
        ("Python", info["python"]),
        ("SQLite", info["sqlite"]),
        ("database filesystem", info["db_filesystem"]),
        (
            "Flask / SQLAlchemy / gunicorn",
            f"{info['flask']} / {info['sqlalchemy']} / {info['gunicorn']}",
        ),
        ("load generator", info["wrk"] or "-"),
        ("commit", info["commit"] or "-"),
        (
            "run",
            f"`python -m bench {args.which}{' --quick' if args.quick else ''}"
            f"{' --webhook' if args.webhook else ''}` "
            f"in {seconds / 60:.1f} min",
        ),
    ]
    return (
        "\n".join(["## Machine", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="all", choices=[*BENCHMARKS, *EXTRA, "all"])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short runs and a smaller database: a smoke run of about a minute",
    )
    parser.add_argument(
        "--reseed",
        action="store_true",
        help="seed the status-API database again even if a cached one is fresh",
    )
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="ingest: with a webhook endpoint subscribed to every event (the outbox's cost)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (server logs, databases, corpora)"
    )
    args = parser.parse_args(argv)
    names = BENCHMARKS if args.which == "all" else [args.which]

    # SIGTERM (or a closed terminal) must still stop the servers: unwind like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    CACHE.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    started = time.monotonic()
    results: dict = {}
    failed: list[str] = []
    try:
        wrk = ensure_wrk() if NEEDS_WRK & set(names) else None
        info = machine.describe(wrk_version(wrk) if wrk else None, CACHE)
        for name in names:
            _log(f"bench: {name} ...")
            try:
                results[name] = _run_one(name, wrk, workdir, args)
            except BenchError as exc:
                # One benchmark that cannot finish must not throw away the others' figures.
                _log(str(exc))
                stop_all()
                failed.append(name)
                results[name] = {"error": str(exc)[-2000:]}
    except BenchError as exc:  # before any benchmark ran (wrk missing, ...)
        _log(str(exc))
        return 2
    except KeyboardInterrupt:
        _log("bench: interrupted")
        return 130
    finally:
        stop_all()
        if args.keep:
            _log(f"bench: work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    seconds = time.monotonic() - started
    renderers = {
        "ingest": ingest.markdown,
        "ingest-pg": ingest.markdown_pg,
        "api": api_scale.markdown,
        "dispatch": dispatch.markdown,
        "prune": prune.markdown,
        "workers": workers.markdown,
    }
    title = "# Relay benchmarks" + (" (quick)" if args.quick else "")
    text = "\n".join(
        [
            title,
            "",
            _machine_markdown(info, args, seconds),
            *(_render(renderers[name], name, results[name]) for name in names),
        ]
    )
    stem = ("quick" if args.quick else "latest") + ("" if args.which == "all" else f"-{args.which}")
    stem += "-webhook" if args.webhook else ""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(
        json.dumps(
            {"machine": info, "quick": args.quick, "seconds": round(seconds, 1), **results},
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(text)
    _log(f"bench: results written to bench/results/{stem}.md and {stem}.json")
    if failed:
        _log(f"bench: failed: {', '.join(failed)}")
        return 2
    return 0


def _run_one(name: str, wrk, workdir: Path, args: argparse.Namespace) -> dict:
    if name == "ingest":
        return ingest.run(wrk, workdir, args.quick, log=_log, webhook=args.webhook)
    if name == "ingest-pg":
        return ingest.run_pg(wrk, workdir, args.quick, log=_log)
    if name == "api":
        return api_scale.run(wrk, workdir, args.quick, args.reseed, log=_log)
    if name == "prune":
        return prune.run(wrk, workdir, args.quick, log=_log)
    if name == "workers":
        return workers.run(wrk, workdir, args.quick, log=_log)
    return dispatch.run(workdir, args.quick, log=_log)


def _render(renderer, name: str, result: dict) -> str:
    if "error" in result:
        return f"## {name}\n\nThis benchmark failed:\n\n```\n{result['error']}\n```\n"
    return renderer(result)


if __name__ == "__main__":
    sys.exit(main())
