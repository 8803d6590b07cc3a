"""``python -m app.sandbox``: the sandbox command without the relay app around it."""

from .cli import sandbox_command

if __name__ == "__main__":
    sandbox_command(prog_name="python -m app.sandbox")
