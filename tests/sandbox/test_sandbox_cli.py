"""The ``sandbox`` command: options, a real run, clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from click.testing import CliRunner

from app.sandbox.cli import sandbox_command
from app.sandbox.scenarios import KNOB_NAMES

ROOT = Path(__file__).resolve().parents[2]


def test_command_shape():
    assert isinstance(sandbox_command, click.Command)
    assert sandbox_command.name == "sandbox"
    names = {p.name for p in sandbox_command.params}
    assert {"host", "port", "scenario", "seed", "mps", "user_id", "token", "secret"} <= names
    assert "reads_per_second" in names
    assert set(KNOB_NAMES) <= names
    defaults = {p.name: p.default for p in sandbox_command.params}
    assert defaults["user_id"] == "u-sandbox"
    assert defaults["token"] == "sandbox-token"
    assert defaults["secret"] == "sandbox-secret"
    assert defaults["scenario"] == "realistic"
    assert defaults["mps"] == 0
    assert defaults["reads_per_second"] == 0


def test_help_and_bad_options():
    runner = CliRunner()
    result = runner.invoke(sandbox_command, ["--help"])
    assert result.exit_code == 0 and "--failure-share" in result.output
    assert runner.invoke(sandbox_command, ["--failure-share", "2"]).exit_code == 2
    assert runner.invoke(sandbox_command, ["--scenario", "chaotic"]).exit_code == 2
    bad_delays = runner.invoke(sandbox_command, ["--delay-min-ms", "50", "--delay-max-ms", "10"])
    assert bad_delays.exit_code == 2 and "delay_min_ms" in bad_delays.output


def test_runs_until_sigterm_and_stops_cleanly(tmp_path, http, receiver):
    url_file = tmp_path / "url"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.sandbox",
            "--port",
            "0",
            "--scenario",
            "perfect",
            "--seed",
            "3",
            "--user-id",
            "u-cli",
            "--token",
            "t",
            "--secret",
            "s",
            "--delay-min-ms",
            "1500",
            "--delay-max-ms",
            "1500",
            "--url-file",
            str(url_file),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while not (url_file.exists() and url_file.read_text().strip()):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "sandbox did not start"
            time.sleep(0.05)
        url = url_file.read_text().strip()
        messages = f"{url}/v1/users/u-cli/messages"
        body = {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "x",
            "callbackUrl": receiver.url("/cb"),
        }
        assert http.post(messages, json=body, auth=("t", "s"), timeout=5).status_code == 201
        assert (
            http.post(
                messages, json=body, auth=("sandbox-token", "sandbox-secret"), timeout=5
            ).status_code
            == 401
        )
        assert http.get(f"{url}/sandbox/idle", timeout=5).json()["pending"] == 1
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert time.monotonic() - started < 5
    assert f"listening on {url}" in stdout
    assert "scenario perfect, seed 3" in stdout
    assert "stopped (1 events not sent)" in stdout
    assert receiver.received == []  # the pending event was dropped with the process
