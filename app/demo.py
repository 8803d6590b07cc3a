"""``make demo``: the relay and the Catapult sandbox on loopback, with sample traffic.

Starts each server in its own process group, sends traffic through the public API, prints a
live summary, and on Ctrl-C (or after ``--duration`` seconds) stops every process it started
with one SIGTERM each, then waits for them: nothing is left running.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port the OS says is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: {url} did not come up within {deadline_s:.0f} s")


class Processes:
    """The servers this demo owns: started in their own groups, stopped one SIGTERM each."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict, log: Path) -> subprocess.Popen:
        handle = open(log, "wb")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc.log_handle = handle  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.log_handle.close()  # type: ignore[attr-defined]


def sample_traffic(base: str, headers: dict) -> None:
    """Single SMS, a batch of 50, MMS with media, user tags, and a few invalid requests."""

    def post(body, note, extra=None):
        response = requests.post(
            f"{base}/api/messages", json=body, headers={**headers, **(extra or {})}, timeout=10
        )
        summary = response.json()
        if isinstance(summary, list):
            accepted = sum(1 for item in summary if item["result"] == "accepted")
            shown = f"{accepted} accepted, {len(summary) - accepted} refused"
        elif response.status_code == 201:
            shown = f"id {summary['id']} ({summary['status']})"
        else:
            shown = f"{summary['category']}/{summary['code']}: {summary['message']}"
        print(f"  {note:<42} -> {response.status_code} {shown}")

    sms = {"from": "+19195550100", "to": "+19195550101"}
    print("Sending sample traffic through POST /api/messages:")
    post({**sms, "text": "Hello from the Catapult relay"}, "one SMS")
    post(
        [{**sms, "to": f"+1919555{2000 + i:04d}", "text": f"Batch message {i}"} for i in range(50)],
        "a batch of 50",
    )
    post({**sms, "text": "A picture", "media": ["https://example.com/cat.jpg"]}, "an MMS")
    for i, tag in enumerate(["order-1001", "order-1002", "campaign-spring"]):
        post(
            {**sms, "to": f"+1919555030{i}", "text": "Your order shipped", "tag": tag},
            f"SMS tagged {tag!r}",
            {"Idempotency-Key": f"demo-{tag}"},
        )
    print("Invalid requests (answered in Catapult's error shape; nothing is queued):")
    post({**sms, "text": "x" * 2049}, "text over 2048 characters")
    post({"to": "+19195550101", "text": "no sender"}, "missing 'from'")
    post({**sms, "text": "x", "callbackUrl": "https://elsewhere"}, "a callbackUrl of its own")
    post([{**sms, "text": "x"}] * 51, "a batch of 51")


def summary_line(base: str, headers: dict) -> tuple[str, dict]:
    stats = requests.get(f"{base}/api/stats", headers=headers, timeout=10).json()
    counts = {k: v for k, v in stats["counts"].items() if v}
    rate = stats["deliveryRate"]
    line = ", ".join(f"{k} {v}" for k, v in counts.items())
    extra = f" | delivery rate {rate:.0%}" if rate is not None else ""
    fallback = stats["events"]["viaFallback"]
    return f"{line}{extra} | events {stats['events']['total']} ({fallback} via fallback)", counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get("DEMO_DURATION", "0")),
        help="stop after this many seconds (0: run until Ctrl-C)",
    )
    parser.add_argument("--scenario", default="realistic")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--instance",
        type=Path,
        default=ROOT / "instance",
        help="folder for the database and the server logs",
    )
    args = parser.parse_args(argv)

    instance = args.instance.resolve()
    instance.mkdir(parents=True, exist_ok=True)
    database = instance / "demo.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    relay_port, sandbox_port = free_port(), free_port()
    relay = f"http://127.0.0.1:{relay_port}"
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    creds = {
        name: secrets.token_urlsafe(12)
        for name in (
            "API_KEYS",
            "CALLBACK_USERNAME",
            "CALLBACK_PASSWORD",
            "DASHBOARD_PASSWORD",
            "SECRET_KEY",
            "CATAPULT_API_TOKEN",
            "CATAPULT_API_SECRET",
        )
    }
    env = {
        **os.environ,
        **creds,
        "RELAY_ENV": "development",
        "DATABASE_URL": f"sqlite:///{database}",
        "PUBLIC_BASE_URL": relay,
        "FALLBACK_BASE_URL": relay,
        "CATAPULT_API_URL": sandbox,
        "CATAPULT_USER_ID": "u-demo",
        "DASHBOARD_USERNAME": "admin",
        "DISPATCH": "inline",
        "CATAPULT_MPS": os.environ.get("CATAPULT_MPS", "0"),
        "PYTHONUNBUFFERED": "1",
    }
    flask = [str(BIN / "flask"), "--app", "wsgi"]
    print(f"Migrating {database} ...", flush=True)
    subprocess.run([*flask, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)

    procs = Processes()
    stop = {"now": False}

    def on_signal(signum, _frame):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        procs.start(
            [
                *flask,
                "sandbox",
                "--host",
                "127.0.0.1",
                "--port",
                str(sandbox_port),
                "--scenario",
                args.scenario,
                "--seed",
                str(args.seed),
                "--user-id",
                "u-demo",
                "--token",
                creds["CATAPULT_API_TOKEN"],
                "--secret",
                creds["CATAPULT_API_SECRET"],
            ],
            env,
            instance / "sandbox.log",
        )
        procs.start(
            [
                str(BIN / "gunicorn"),
                "wsgi:app",
                "--bind",
                f"127.0.0.1:{relay_port}",
                "--workers",
                "2",
                "--config",
                str(ROOT / "gunicorn.conf.py"),
            ],
            env,
            instance / "relay.log",
        )
        wait_until_up(f"{sandbox}/sandbox/messages")
        wait_until_up(f"{relay}/readyz")
        print(f"Catapult sandbox ({args.scenario}): {sandbox}   log: {instance}/sandbox.log")
        print(f"Relay (gunicorn, 2 workers):  {relay}   log: {instance}/relay.log")
        print(f"API key (Bearer):  {creds['API_KEYS']}")
        print(
            f"Dashboard:         {relay}/dashboard   user admin, "
            f"password {creds['DASHBOARD_PASSWORD']}"
        )
        print(
            f"Status API:        curl -H 'Authorization: Bearer {creds['API_KEYS']}' "
            f"{relay}/api/stats\n",
            flush=True,
        )
        headers = {"Authorization": f"Bearer {creds['API_KEYS']}"}
        sample_traffic(relay, headers)
        print("\nLive summary (Ctrl-C to stop):", flush=True)
        started = time.monotonic()
        last = ""
        while not stop["now"]:
            if args.duration and time.monotonic() - started > args.duration:
                break
            line, _counts = summary_line(relay, headers)
            if line != last:
                print(f"  [{time.monotonic() - started:5.1f}s] {line}", flush=True)
                last = line
            time.sleep(1)
        example = requests.get(
            f"{relay}/api/messages?status=delivered&limit=1", headers=headers, timeout=10
        ).json()["items"]
        if example:
            print(f"\nA delivered message: {json.dumps(example[0])}")
    finally:
        print("Stopping the relay and the sandbox ...", flush=True)
        procs.stop()
        print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
