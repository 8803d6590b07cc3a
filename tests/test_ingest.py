"""The intake of callbacks and its journal, in process: the budget, the ways to the journal,
what happens when neither the database nor the journal can take a callback, readiness."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from app import create_app, ingest
from app.events import Received
from app.extensions import db
from app.journal import Journal, JournalError
from app.models import CallbackEvent
from tests.conftest import close_app, make_config
from tests.test_callbacks import event, make_message


@pytest.fixture
def make(tmp_path):
    apps = []

    def build(create: bool = True, **overrides):
        app = create_app(make_config(tmp_path, **overrides))
        if create:
            with app.app_context():
                db.create_all()
        apps.append(app)
        return app

    yield build
    for app in apps:
        close_app(app)


def _events(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(CallbackEvent))


def test_a_commit_slower_than_the_budget_sends_the_callback_to_the_journal(
    make, cb_auth, monkeypatch
):
    app = make(CALLBACK_DB_BUDGET_MS=300)
    message_id = make_message(app)
    release = threading.Event()
    apply = ingest.apply_events

    def slow(*args, **kwargs):
        release.wait(5)
        return apply(*args, **kwargs)

    monkeypatch.setattr(ingest, "apply_events", slow)
    client = app.test_client()
    started = time.monotonic()
    answer = client.post("/callbacks/catapult", json=event(tag=message_id), headers=cb_auth)
    took = time.monotonic() - started
    assert answer.status_code == 200 and 0.3 <= took < 1.0
    journal = app.extensions[ingest.EXTENSION].journal
    assert journal.active() and journal.depth()[0] == 1
    # The next callback does not wait for the budget: the host is in journal mode.
    started = time.monotonic()
    assert client.post("/callbacks/catapult", json=event(tag=message_id), headers=cb_auth)
    assert time.monotonic() - started < 0.3 and journal.depth()[0] == 2
    release.set()  # the slow commit finishes: the first callback is in the database now
    monkeypatch.setattr(ingest, "apply_events", apply)
    app.extensions[ingest.EXTENSION].replayer.run_once(wait=True)
    assert _events(app) == 2 and not journal.active()  # the first one once, not twice


def test_neither_database_nor_journal_means_503_and_the_carrier_tries_the_fallback(
    make, tmp_path, cb_auth
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the journal's folder should be")
    app = make(
        create=False,
        DATABASE_URL=f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'db.sqlite3'}",
        JOURNAL_DIR=str(blocker / "journal"),
    )
    answer = app.test_client().post("/callbacks/catapult", json=event(), headers=cb_auth)
    assert answer.status_code == 503
    assert answer.get_json()["category"] == "unavailable" and answer.headers["Retry-After"]
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["status"] == "unavailable"


def test_readiness_with_a_broken_journal_but_a_database(make, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    app = make(JOURNAL_DIR=str(blocker / "journal"))
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["degraded"] is True and body["journal"]["writable"] is False


def test_readiness_while_the_database_is_down_but_the_journal_takes_callbacks(
    make, tmp_path, cb_auth
):
    app = make(
        create=False, DATABASE_URL=f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'db.sqlite3'}"
    )
    client = app.test_client()
    assert client.post("/callbacks/catapult", json=event(), headers=cb_auth).status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "degraded" and body["database"] == "unavailable"
    assert body["journal"] == {
        "writable": True,
        "depth": 1,
        "oldestAgeSeconds": body["journal"]["oldestAgeSeconds"],
    }
    assert body["journal"]["oldestAgeSeconds"] >= 0


def test_the_journal_keeps_arrival_order_and_sets_aside_what_never_applies(tmp_path):
    journal = Journal(tmp_path / "journal")
    assert journal.depth() == (0, None) and not journal.active()
    first, second, third = (Received("primary", "POST", f'{{"n": {i}}}') for i in range(3))
    journal.append([first, second])
    journal.append([third, first])  # the same request twice: kept once
    assert journal.active() and journal.depth()[0] == 3
    entries = journal.head(10)
    assert [r.key for _, r in entries] == [first.key, second.key, third.key]
    assert entries[0][1].received_at == first.received_at and entries[0][1].raw == first.raw
    assert not journal.note_failure(entries[1][0], "boom", max_attempts=2)
    assert journal.note_failure(entries[1][0], "boom again", max_attempts=2)  # set aside
    assert journal.dead() == 1 and journal.depth()[0] == 2
    journal.remove([entries[0][0], entries[2][0]])
    assert journal.settle() and not journal.active() and journal.depth() == (0, None)


def test_a_journal_that_cannot_be_opened_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    journal = Journal(blocker / "journal")
    with pytest.raises(JournalError):
        journal.append([Received("primary", "GET", "messageId=m-x")])
    assert journal.writable() is False
