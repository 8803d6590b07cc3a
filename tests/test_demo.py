"""``make demo``'s program, headless: it starts both servers, shows a delivered message and the
dashboard URL, and on Ctrl-C (SIGINT) stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _processes_mentioning(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def test_demo_runs_shows_a_delivery_and_leaves_nothing_behind(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CATAPULT_", "API_"))}
    demo = subprocess.Popen(
        [sys.executable, "-m", "app.demo", "--instance", str(tmp_path)],
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        for line in demo.stdout:
            lines.append(line)
            if re.search(r"\] .*delivered \d+", line) or time.monotonic() > deadline:
                break
        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    output = "".join(lines) + rest
    assert demo.returncode == 0, output
    relay = re.search(r"Relay \(gunicorn, 2 workers\):\s+http://127\.0\.0\.1:(\d+)", output)
    sandbox = re.search(r"Catapult sandbox \(realistic\): http://127\.0\.0\.1:(\d+)", output)
    assert relay and sandbox, output
    assert re.search(
        rf"Dashboard:\s+http://127\.0\.0\.1:{relay[1]}/dashboard\s+user admin, "
        r"password \S{12,}",
        output,
    )
    assert re.search(r"delivered \d+", output)
    assert '"status": "delivered"' in output  # a delivered message shown in full
    assert "Stopped." in output
    time.sleep(0.5)
    assert _processes_mentioning(f"127.0.0.1:{relay[1]}") == []
    assert _processes_mentioning(f"--port {sandbox[1]}") == []
    assert (tmp_path / "demo.sqlite3").exists()
