"""``flask --app wsgi sandbox``: run the Catapult v1 sandbox until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .options import DEFAULT_SECRET, DEFAULT_TOKEN, DEFAULT_USER_ID
from .scenarios import SCENARIOS
from .server import SandboxServer

SHARE = click.FloatRange(0, 1)
MILLIS = click.FloatRange(min=0)

# Each knob overrides the scenario's value when given.
KNOB_OPTIONS: tuple[tuple[str, click.ParamType, str], ...] = (
    ("--failure-share", SHARE, "share of messages not delivered (non-zero deliveryCode)"),
    ("--error-share", SHARE, "share of messages whose send fails (state error)"),
    ("--delay-min-ms", MILLIS, "minimum gap before each event"),
    ("--delay-max-ms", MILLIS, "maximum gap before each event"),
    ("--duplicate-share", SHARE, "share of events sent twice"),
    ("--reorder-share", SHARE, "share of messages whose last two events swap order"),
    ("--early-share", SHARE, "share of messages whose first event precedes the send response"),
    (
        "--primary-outage-share",
        SHARE,
        "share of primary attempts treated as failed (fallback is used)",
    ),
    ("--inbound-share", SHARE, "share of messages followed by an inbound reply"),
    ("--garbage-share", SHARE, "share of events with odd unicode / string codes / unknown fields"),
    ("--slow-share", SHARE, "share of receipts held back by --slow-delay-ms"),
    ("--slow-delay-ms", MILLIS, "extra delay of a slow receipt"),
)


FLAG_ALIASES = {"--primary-outage-share": "--outage-share", "--early-share": "--early-event-share"}


def knob_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Attach one option per scenario knob (plus its alias spelling, if any)."""
    for flag, kind, text in reversed(KNOB_OPTIONS):
        flags = [flag, FLAG_ALIASES[flag]] if flag in FLAG_ALIASES else [flag]
        command = click.option(*flags, type=kind, default=None, help=text)(command)
    return command


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="port (0: any free port)")
@click.option(
    "--scenario", type=click.Choice(sorted(SCENARIOS)), default="realistic", show_default=True
)
@click.option("--seed", type=int, default=None, help="seed of the scenario's decisions")
@click.option(
    "--mps",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="messages/s per account, averaged over 10 s (0: no limit)",
)
@click.option(
    "--mps-per-number",
    type=click.FloatRange(min=0),
    default=None,
    help="messages/s per from number (default: --mps)",
)
@click.option(
    "--reads-per-second",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="GET message/list requests per second before 429 rate-limit-reached (0: no limit)",
)
@click.option("--user-id", default=DEFAULT_USER_ID, show_default=True)
@click.option("--token", default=DEFAULT_TOKEN, show_default=True)
@click.option("--secret", default=DEFAULT_SECRET, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=12,
    show_default=True,
    help="callback sender threads",
)
@click.option(
    "--public-url", default=None, help="base of Location/messageUri (default: request host)"
)
@click.option(
    "--early-wait-ms",
    type=click.IntRange(0),
    default=None,
    help="how long a send response waits for its early events",
)
@click.option(
    "--url-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the base URL here once listening",
)
@click.option("--log-requests/--no-log-requests", default=False, help="werkzeug access log")
@knob_options
def sandbox_command(
    host: str, port: int, url_file: Path | None, log_requests: bool, **options: Any
) -> None:
    """Run the Catapult v1 messaging sandbox (no relay configuration needed)."""
    try:
        server = SandboxServer(host, port, log_requests=log_requests, **options).start()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    config = server.sandbox.options
    click.echo(
        f"Catapult v1 sandbox listening on {server.url} "
        f"(scenario {config.scenario}, seed {config.seed}, mps {config.mps:g}; "
        f"user {config.user_id}, token {config.token})",
        err=False,
    )
    if url_file is not None:
        url_file.write_text(server.url + "\n")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        pending = server.sandbox.status()["pending"]
        click.echo("Catapult v1 sandbox stopping ...")
        server.stop(timeout=5.0)  # queued events are dropped, attempts under way may finish
        click.echo(f"Catapult v1 sandbox stopped ({pending} events not sent).")
