"""A replayer in a process of its own, for tests that kill it mid-replay.

``python -m tests.reliability.replay_child DATABASE_URL JOURNAL_DIR MODE`` replays the journal
once. MODE ``after-commit`` dies (SIGKILL) after its first transaction committed and before the
journal forgot those entries; ``mid-transaction`` dies inside its first transaction;
``run`` prints ``replaying`` and replays until someone kills it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from app import create_app, ingest
from tests.conftest import make_config


def _die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def main(database_url: str, journal_dir: str, mode: str) -> None:
    app = create_app(
        make_config(Path(journal_dir).parent, DATABASE_URL=database_url, JOURNAL_DIR=journal_dir)
    )
    intake = app.extensions[ingest.EXTENSION]
    if mode == "after-commit":
        intake.journal.remove = _die
    elif mode == "mid-transaction":
        calls = []
        store = ingest.store_event

        def store_then_die(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                _die()
            return store(*args, **kwargs)

        ingest.store_event = store_then_die
    print("replaying", flush=True)
    intake.replayer.run_once()
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
