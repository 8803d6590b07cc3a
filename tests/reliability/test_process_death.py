"""Processes killed under load (SIGKILL: no chance to clean up): a worker taking callbacks
never answered 200 for an event it had not stored; a dispatcher killed in the middle of a
carrier request never has its messages sent twice (they become ``unknown`` and are settled by
their callbacks or by reconciliation) and a standby takes over."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests
from sqlalchemy import create_engine, select

from app.models import Lease, Message
from app.sandbox.server import SandboxServer
from tests.conftest import API_KEY
from tests.reliability.conftest import callback, event_body, prepare_database, wait_for
from tests.servers import Dispatcher, SlowSends, relay_env


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A database of the relay's tables: a SQLite file, or a schema of this module's server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.sqlite3'}"
    _cluster, url = request.getfixturevalue("pg_schema")
    return url


def _stored_carrier_ids(url: str) -> list[str]:
    from app.models import CallbackEvent

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(select(CallbackEvent.carrier_message_id)))
    finally:
        engine.dispose()


def test_a_worker_killed_under_load_gave_200_only_for_stored_events(
    tmp_path, database, start_relay
):
    prepare_database(tmp_path, database, 1)
    relay = start_relay(database)
    answered: dict[str, int | None] = {}
    stop = threading.Event()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            carrier_id = f"m-load{worker:02d}x{i:014d}"
            answered[carrier_id] = callback(relay.url, event_body(carrier_id), timeout=5).status
            i += 1

    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    victim = relay.workers()[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    wait_for(lambda: len(relay.workers()) == 2, timeout=20)  # the master replaced it
    ok = {carrier_id for carrier_id, status in answered.items() if status == 200}
    stored = _stored_carrier_ids(database)
    assert len(stored) == len(set(stored))  # nothing twice
    assert ok <= set(stored)  # every 200 is a stored event
    assert len(ok) > 100 and set(stored) <= set(answered)


def _lease_holder(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(Lease.holder))
    finally:
        engine.dispose()


def _messages(url: str) -> list[Message]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(Message.id, Message.status, Message.carrier_request)))
    finally:
        engine.dispose()


def test_the_active_dispatcher_killed_mid_send_never_sends_twice(tmp_path, pg_schema, start_relay):
    _cluster, url = pg_schema
    prepare_database(tmp_path, url, 0)
    with SandboxServer(scenario="perfect", seed=5) as sandbox:
        slow = SlowSends(sandbox.app.wsgi_app, 0.4)
        sandbox.app.wsgi_app = slow
        carrier = {
            "CATAPULT_API_URL": sandbox.url,
            "CATAPULT_USER_ID": sandbox.user_id,
            "CATAPULT_API_TOKEN": sandbox.token,
            "CATAPULT_API_SECRET": sandbox.secret,
            "RECONCILE_AFTER_S": "1",
        }
        relay = start_relay(url, DISPATCH="worker", PUBLIC_BASE_URL="{url}", **carrier)
        env = relay_env(url, tmp_path / "journal", DISPATCH="worker", **carrier)
        env["PUBLIC_BASE_URL"] = relay.url
        dispatchers = {}
        try:
            for name in ("a", "b"):
                worker = Dispatcher(env, tmp_path / f"dispatch-{name}.log")
                dispatchers[worker.pid] = worker
            batch = [
                {"from": "+15555550100", "to": f"+1555557{i:04d}", "text": f"m{i}"}
                for i in range(50)
            ]
            for _ in range(4):
                answer = requests.post(
                    f"{relay.url}/api/messages",
                    json=batch,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    timeout=10,
                )
                assert answer.status_code == 202
            holder = wait_for(lambda: _lease_holder(url), timeout=15)
            assert slow.in_flight.wait(15)  # a carrier request of the holder is under way
            victim = int(holder.split(":")[-2])
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            new_holder = wait_for(
                lambda: (h := _lease_holder(url)) != holder and h, timeout=15, interval=0.05
            )
            takeover = time.monotonic() - killed_at
            assert int(new_holder.split(":")[-2]) in set(dispatchers) - {victim}
            assert takeover < 10.0
            wait_for(
                lambda: {m.status for m in _messages(url)} == {"delivered"},
                timeout=90,
                interval=0.5,
            )
            sandbox.wait_idle(timeout=30)
            truth = requests.get(f"{sandbox.url}/sandbox/messages", timeout=10).json()["messages"]
        finally:
            for worker in dispatchers.values():
                worker.stop()
    tags = [m["tag"] for m in truth if m["direction"] == "out"]
    assert len(tags) == len(set(tags)) == 200  # every message sent, none twice
    # The batch in flight when the holder died: its response was never recorded (the new
    # holder turned those rows "unknown"); callbacks and reconciliation settled them.
    unrecorded = [m for m in _messages(url) if m.carrier_request is None]
    assert 0 < len(unrecorded) <= 50
