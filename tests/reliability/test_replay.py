"""A replayer that dies halfway loses no event and applies none twice: each journal entry
carries its request key, unique in the database, and leaves the journal only after the
transaction that stored it has committed."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from app.events import Received
from app.extensions import db
from app.ingest import EXTENSION
from app.journal import Journal
from app.models import CallbackEvent, Message
from tests.reliability.conftest import event_body
from tests.servers import ROOT

pytestmark = pytest.mark.both_backends


def _seed(app, count: int) -> list[tuple[str, str]]:
    from app import messaging
    from app.models import utcnow

    with app.app_context():
        rows = messaging.enqueue(
            db.session, [{"from": "+15555550100", "to": "+15555550101", "text": "x"}] * count
        )
        pairs = []
        for i, message in enumerate(rows):
            message.status, message.accepted_at = "accepted", utcnow()
            message.carrier_message_id = f"m-replay{i:015d}"
            pairs.append((message.id, message.carrier_message_id))
        db.session.commit()
    return pairs


def _journal(app, pairs) -> list[str]:
    """One delivery receipt per message, journaled as the callback path would."""
    import json

    entries = [
        Received(
            via="primary",
            method="POST",
            raw=json.dumps(event_body(carrier, tag, deliveryState="delivered", deliveryCode=0)),
            content_type="application/json",
        )
        for tag, carrier in pairs
    ]
    journal = Journal(app.config["JOURNAL_DIR"])
    for start in range(0, len(entries), 500):
        journal.append(entries[start : start + 500])
    journal.close()
    return [e.key for e in entries]


def _child(app, mode: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.replay_child",
            app.config["SQLALCHEMY_DATABASE_URI"],
            app.config["JOURNAL_DIR"],
            mode,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _stored(app) -> tuple[int, int, int]:
    """Events stored, distinct request keys among them, messages delivered."""
    with app.app_context():
        events = db.session.scalar(select(func.count()).select_from(CallbackEvent))
        keys = db.session.scalar(select(func.count(func.distinct(CallbackEvent.request_key))))
        delivered = db.session.scalar(
            select(func.count()).select_from(Message).where(Message.status == "delivered")
        )
    return events, keys, delivered


@pytest.mark.parametrize("mode", ["after-commit", "mid-transaction"])
def test_a_replayer_killed_at_the_worst_moment(app, mode):
    pairs = _seed(app, 30)
    _journal(app, pairs)
    with _child(app, mode) as child:
        child.communicate(timeout=60)
    assert child.returncode == -9  # it died where the test made it die
    committed = _stored(app)
    # After the commit: its first batch is stored, but still in the journal. Mid-transaction:
    # nothing of it is.
    assert committed == ((30, 30, 30) if mode == "after-commit" else (0, 0, 0))
    replayer = app.extensions[EXTENSION].replayer
    assert (
        replayer.run_once(wait=True) == 30
    )  # every entry accounted for (skipped when stored already)
    assert _stored(app) == (30, 30, 30)
    assert Journal(app.config["JOURNAL_DIR"]).depth()[0] == 0


def test_a_replayer_killed_at_a_random_moment(app):
    pairs = _seed(app, 5000)
    _journal(app, pairs)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.02, 0.4)
    print(f"kill after {delay:.3f} s (seed {seed})")
    with _child(app, "run") as child:
        assert child.stdout.readline().strip() == "replaying"
        time.sleep(delay)
        child.kill()
        child.communicate(timeout=30)
    before = _stored(app)
    print(f"stored before the kill: {before[0]} of 5000")
    assert before[0] == before[1]  # never a request stored twice, even by a dying replayer
    app.extensions[EXTENSION].replayer.run_once(wait=True)
    assert _stored(app) == (5000, 5000, 5000)
