"""PostgreSQL stops in the middle of the traffic: every callback is still answered 200 in well
under a second (journaled), and once the server is back each one is stored exactly once.

Real parts: the relay under gunicorn with the project's gunicorn.conf.py, a real PostgreSQL
server that the test halts as a crash would and starts again."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import requests

from tests.conftest import API_KEY
from tests.reliability.conftest import (
    event_body,
    mixed,
    prepare_database,
    ready,
    send_all,
    statuses,
    stored_events,
    wait_for,
)
from tests.servers import Dispatcher, relay_env

ALL_ROUTES = {("POST", "primary"), ("GET", "primary"), ("POST", "fallback"), ("GET", "fallback")}


def _journal_pids(journal_dir) -> set[int]:
    """The processes that wrote the entries still waiting in the journal."""
    con = sqlite3.connect(journal_dir / "callbacks.sqlite3")
    try:
        return {pid for (pid,) in con.execute("SELECT DISTINCT pid FROM entries")}
    finally:
        con.close()


def test_callbacks_during_an_outage_are_answered_then_stored_exactly_once(
    tmp_path, pg_schema, start_relay
):
    cluster, url = pg_schema
    messages = prepare_database(tmp_path, url, 60)
    relay = start_relay(url)
    # Before the outage: straight into the database.
    before = send_all(relay.url, mixed([event_body(c, r) for r, c in messages[:20]]))
    assert [a.status for a in before] == [200] * 20
    assert ready(relay.url)["degraded"] is False

    cluster.halt()
    during_bodies = [
        event_body(c, r, deliveryState="delivered", deliveryCode=0) for r, c in messages[:20]
    ] + [event_body(c, r) for r, c in messages[20:40]]
    during = send_all(relay.url, mixed(during_bodies), parallel=1)  # one after the other
    assert [a.status for a in during] == [200] * 40, [a for a in during if a.status != 200]
    assert max(a.seconds for a in during) < 1.0, sorted(a.seconds for a in during)[-5:]
    print(f"outage: 40/40 answered 200, slowest {max(a.seconds for a in during) * 1000:.0f} ms")

    state = ready(relay.url)
    assert state["http"] == 200 and state["degraded"] is True
    assert state["database"] == "unavailable" and state["journal"]["depth"] == 40
    # The API says so, in Catapult's shape, and stores nothing; the dashboard shows a page.
    send = requests.post(
        f"{relay.url}/api/messages",
        json={"from": "+15555550100", "to": "+15555550101", "text": "during"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert send.status_code == 503, send.text
    assert send.json()["category"] == "unavailable" and send.headers["Retry-After"]
    page = requests.get(f"{relay.url}/dashboard/", auth=("dash", "dash-pass"), timeout=10)
    assert page.status_code == 503 and "database is not answering" in page.text
    assert "Traceback" not in page.text
    metrics = requests.get(f"{relay.url}/metrics", timeout=5).text
    assert "relay_journal_depth 40.0" in metrics

    cluster.resume()
    resumed = time.monotonic()
    wait_for(lambda: ready(relay.url)["journal"]["depth"] == 0, timeout=30)
    print(f"outage: journal drained {time.monotonic() - resumed:.2f} s after the restart")
    assert ready(relay.url)["degraded"] is False

    events = stored_events(url)
    keys = [e["request_key"] for e in events]
    assert len(events) == 60 and len(set(keys)) == 60  # each callback exactly once
    after_outage = events[20:]
    assert {(e["method"], e["via"]) for e in after_outage} == ALL_ROUTES
    # Replayed in arrival order, with the time each one arrived.
    assert [e["received_at"] for e in after_outage] == sorted(
        e["received_at"] for e in after_outage
    )
    assert [e["carrier_message_id"] for e in after_outage] == [
        b["messageId"] for b in during_bodies
    ]
    # Applied by the same state machine as live callbacks: receipts delivered, the rest sent.
    final = statuses(url)
    assert {final[c] for _, c in messages[:20]} == {"delivered"}
    assert {final[c] for _, c in messages[20:40]} == {"sent"}
    assert {final[c] for _, c in messages[40:]} == {"accepted"}
    # And the relay takes callbacks directly again.
    assert send_all(relay.url, mixed([event_body(c, r) for r, c in messages[40:]]))[0].status == 200
    assert len(stored_events(url)) == 80


def test_a_worker_killed_during_the_outage_leaves_nothing_behind(tmp_path, pg_schema, start_relay):
    """The journal outlives the process that wrote it: a SIGKILLed worker's entries are
    replayed by another process of the host (or its replacement)."""
    cluster, url = pg_schema
    messages = prepare_database(tmp_path, url, 30)
    relay = start_relay(url)
    cluster.halt()
    answers = send_all(relay.url, mixed([event_body(c, r) for r, c in messages]))
    assert [a.status for a in answers] == [200] * 30
    writers = _journal_pids(tmp_path / "journal")
    assert writers <= set(relay.workers()) and writers
    victim = sorted(writers)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in relay.workers() and len(relay.workers()) == 2, timeout=20)
    cluster.resume()
    wait_for(lambda: ready(relay.url)["journal"]["depth"] == 0, timeout=30)
    events = stored_events(url)
    assert sorted(e["carrier_message_id"] for e in events) == sorted(c for _, c in messages)
    assert len({e["request_key"] for e in events}) == 30


def test_a_relay_killed_whole_during_the_outage_is_replayed_by_its_replacement(
    tmp_path, pg_schema, start_relay
):
    cluster, url = pg_schema
    messages = prepare_database(tmp_path, url, 20)
    relay = start_relay(url)
    cluster.halt()
    assert {
        a.status for a in send_all(relay.url, mixed([event_body(c, r) for r, c in messages]))
    } == {200}
    relay.kill()  # master and workers at once
    cluster.resume()
    time.sleep(1.0)
    assert stored_events(url) == []  # nobody was left to replay them ...
    replacement = start_relay(url)  # ... until the replacement starts, with no traffic at all
    wait_for(lambda: len(stored_events(url)) == 20, timeout=30)
    assert ready(replacement.url)["journal"]["depth"] == 0
    assert {statuses(url)[c] for _, c in messages} == {"sent"}


def test_the_worker_role_replays_a_journal_its_web_processes_left(tmp_path, pg_schema, start_relay):
    """One host, web processes gone, the worker role (``flask dispatch``) still running: it
    replays the host's journal too."""
    cluster, url = pg_schema
    messages = prepare_database(tmp_path, url, 10)
    relay = start_relay(url)
    cluster.halt()
    answers = send_all(relay.url, mixed([event_body(c, r) for r, c in messages]))
    assert {a.status for a in answers} == {200}
    relay.kill()
    cluster.resume()
    worker = Dispatcher(
        relay_env(url, tmp_path / "journal", DISPATCH="worker"), tmp_path / "dispatch.log"
    )
    try:
        wait_for(lambda: len(stored_events(url)) == 10, timeout=30)
    finally:
        worker.stop()
    assert {statuses(url)[c] for _, c in messages} == {"sent"}
