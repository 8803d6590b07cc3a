"""CLI commands: ``dispatch`` (the worker role), ``sandbox``, ``rollups`` and ``prune``."""

from __future__ import annotations

import time

import click
from flask import Flask
from flask.cli import with_appcontext

PROGRESS_EVERY = 2.0  # seconds between two progress lines of ``prune``


def register_commands(app: Flask) -> None:
    """Attach the relay's commands to ``app.cli``."""
    from .sandbox.cli import sandbox_command
    from .worker import dispatch_command

    app.cli.add_command(dispatch_command)
    app.cli.add_command(sandbox_command)
    app.cli.add_command(rollups_command)
    app.cli.add_command(prune_command)


def catch_up_rollups() -> int:
    """Rollup passes (one short transaction each) until they are up to date; new buckets."""
    from sqlalchemy.orm import Session

    from .extensions import db
    from .retention import database_time
    from .rollups import refresh

    total = 0
    while True:
        with Session(db.engine) as session:
            covered = refresh(session, now=database_time(db.engine))
            session.commit()
        total += covered
        if covered == 0:
            return total


@click.command("rollups")
@with_appcontext
def rollups_command() -> None:
    """Bring the stats rollups fully up to date (the dispatcher keeps them so afterwards)."""
    click.echo(f"rollups up to date ({catch_up_rollups()} new 5-minute buckets)")


def _age(_ctx, _param, value: str):
    from .retention import parse_age

    try:
        return parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("prune")
@click.option(
    "--older-than", required=True, callback=_age, help="Age of what goes: 30d, 12h or 90m."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 5000),
    default=None,
    help="Most messages per transaction (default 500; smaller when a batch is slow).",
)
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@with_appcontext
def prune_command(older_than, batch_size: int | None, dry_run: bool) -> None:
    """Delete old callback events and old final messages, in small batches (retention)."""
    from .extensions import db
    from .retention import BATCH_SIZE, LOCK_TARGET_S, Pruner

    # Only rows the rollups have counted can go, so count everything first (a dry run too:
    # it must find what the real run would delete).
    catch_up_rollups()
    pruner = Pruner(db.engine, older_than, batch_size or BATCH_SIZE, dry_run=dry_run)
    click.echo(
        f"prune: rollups up to date; batches of at most {pruner.batch_size} messages, each "
        f"holding the write lock about {LOCK_TARGET_S * 1000:g} ms"
    )
    next_line = time.monotonic() + PROGRESS_EVERY
    while not pruner.done:
        started = time.monotonic()
        deleted = pruner.step()
        took = time.monotonic() - started
        if deleted and not dry_run:
            # As long as the batch held the write lock: callbacks queued behind it go first.
            time.sleep(took)
        if time.monotonic() >= next_line:
            next_line = time.monotonic() + PROGRESS_EVERY
            click.echo(
                f"prune: {pruner.deleted['messages']:,} messages, "
                f"{pruner.deleted['events']:,} events so far ({pruner.phase})"
            )
    click.echo(f"prune: {pruner.summary()}")
