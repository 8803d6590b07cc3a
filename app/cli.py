"""CLI commands: ``flask --app wsgi dispatch`` (the worker role) and ``sandbox``."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import with_appcontext


def register_commands(app: Flask) -> None:
    """Attach the relay's commands to ``app.cli``."""
    from .sandbox.cli import sandbox_command
    from .worker import dispatch_command

    app.cli.add_command(dispatch_command)
    app.cli.add_command(sandbox_command)
    app.cli.add_command(rollups_command)


@click.command("rollups")
@with_appcontext
def rollups_command() -> None:
    """Bring the stats rollups fully up to date (the dispatcher keeps them so afterwards)."""
    from sqlalchemy.orm import Session

    from .extensions import db
    from .rollups import refresh

    total = 0
    while True:
        with Session(db.engine) as session:
            covered = refresh(session)
            session.commit()
        total += covered
        if covered == 0:
            break
    click.echo(f"rollups up to date ({total} new 5-minute buckets)")
