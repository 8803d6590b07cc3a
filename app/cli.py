"""CLI commands: ``flask --app wsgi dispatch`` (the worker role) and ``sandbox``."""

from __future__ import annotations

from flask import Flask


def register_commands(app: Flask) -> None:
    """Attach the relay's commands to ``app.cli``."""
    from .dispatcher import dispatch_command
    from .sandbox.cli import sandbox_command

    app.cli.add_command(dispatch_command)
    app.cli.add_command(sandbox_command)
