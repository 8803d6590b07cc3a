"""The load generator: ``wrk`` with ``callbacks.lua`` (installed with apt-get when missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from .servers import BenchError

LUA = Path(__file__).resolve().parent / "callbacks.lua"


def ensure_wrk() -> str:
    """The path of ``wrk``; installs the Debian package when run as root, else says how."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk not found, installing it with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise BenchError(f"bench: `{' '.join(args)}` failed:\n{result.stderr[-2000:]}")
        found = shutil.which("wrk")
        if found:
            return found
    raise BenchError(
        "bench: the load generator `wrk` is missing. Install it (Debian/Ubuntu: "
        "`sudo apt-get install wrk`; macOS: `brew install wrk`) and run again."
    )


def wrk_version(wrk: str) -> str:
    result = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
    line = (
        (result.stdout or result.stderr).splitlines()[0]
        if (result.stdout or result.stderr)
        else "wrk"
    )
    return line.split(" Copyright")[0].strip()


def run_wrk(
    wrk: str,
    url: str,
    corpus: Path,
    *,
    threads: int,
    connections: int,
    seconds: float,
    rate: float = 0,
    offset: int = 0,
    auth: str = "",
    timeout_s: int = 30,
) -> dict:
    """Replay ``corpus`` against ``url`` for ``seconds``; the Lua summary as a dict plus
    ``rps`` (answers per second from the first request to the last answer) and ``in_flight``
    (requests written but not answered when wrk stopped: the server still handles them)."""
    duration = max(1, round(seconds))
    args = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        str(corpus),
        str(offset),
        str(threads),
        str(rate),
        auth,
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    summary = json.loads(line.removeprefix("BENCH_JSON "))
    summary["in_flight"] = summary["sent"] - summary["answered"]
    summary["rps"] = summary["answered"] / summary["span_s"] if summary["span_s"] else 0.0
    summary["latency_ms"] = {k: v / 1000 for k, v in summary.pop("latency_us").items()}
    return summary
