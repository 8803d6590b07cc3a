"""Metrics correct across processes: gunicorn's workers each count in their own files of the
instance's multiprocess directory, and ``/metrics`` (whichever worker answers it) sums them;
a worker that dies keeps its counts and leaves the live gauges; the worker role serves its own."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import create_engine, select

from app import create_app, messaging
from app.extensions import db
from app.models import Lease
from app.sandbox.server import SandboxServer
from tests.conftest import CALLBACK_PASSWORD, CALLBACK_USER, close_app, make_config
from tests.deploy.conftest import json_lines, scrape
from tests.reliability.conftest import wait_for
from tests.servers import relay_env

AUTH = (CALLBACK_USER, CALLBACK_PASSWORD)


def parked_count(samples) -> float:
    key = ("relay_callbacks_total", (("method", "POST"), ("outcome", "parked"), ("via", "primary")))
    return samples.get(key, 0.0)


def send_callbacks(url: str, count: int) -> None:
    """``count`` callbacks for carrier ids nobody knows (each is stored, parked), 8 at a time,
    each on a connection of its own so that both workers take some."""

    def one(_i):
        body = {"messageId": f"m-{uuid.uuid4().hex[:23]}", "state": "sent", "eventType": "sms"}
        answer = requests.post(
            f"{url}/callbacks/catapult",
            json=body,
            auth=AUTH,
            headers={"Connection": "close"},
            timeout=10,
        )
        assert answer.status_code == 200

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def callback_pids(relay) -> dict[int, int]:
    pids: dict[int, int] = {}
    for line in json_lines(relay.log_path):
        if line.get("route") == "/callbacks/catapult":
            pids[line["pid"]] = pids.get(line["pid"], 0) + 1
    return pids


def lease_holder_pid(url: str) -> int | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            holder = conn.scalar(select(Lease.holder).where(Lease.expires_at.is_not(None)))
    finally:
        engine.dispose()
    return int(holder.split(":")[-2]) if holder else None


def test_two_workers_counters_are_summed_and_outlive_a_killed_worker(
    tmp_path, sqlite_db, processes
):
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_99999.db").write_bytes(b"left by an earlier run")  # must be wiped
    relay = processes.web(
        sqlite_db, workers=2, DISPATCH="inline", PROMETHEUS_MULTIPROC_DIR=str(folder)
    )
    assert not (folder / "counter_99999.db").exists()
    sent = 0
    while len(callback_pids(relay)) < 2 and sent < 400:
        send_callbacks(relay.url, 40)
        sent += 40
    # A request's line is written just after its answer: wait for the last ones.
    wait_for(lambda: sum(callback_pids(relay).values()) == sent, 10)
    pids = callback_pids(relay)
    assert len(pids) == 2, pids  # both workers took callbacks
    # Whichever worker answers, the scrape is the sum of both.
    for _ in range(6):
        samples = scrape(relay.url)
        assert parked_count(samples) == sent
        assert samples[("relay_callback_seconds_count", (("via", "primary"),))] == sent
    # What the database says is read at scrape time, once (not summed over the workers).
    assert samples[("relay_parked_events", ())] == sent
    assert samples[("relay_queue_depth", ())] == 0 == samples[("relay_messages_unknown", ())]
    assert samples[("relay_journal_depth", ())] == 0
    scrapers = {
        line["pid"] for line in json_lines(relay.log_path) if line.get("route") == "/metrics"
    }
    assert scrapers <= set(pids)

    # One inline dispatcher holds the lease: the live gauge sums to 1 over the workers.
    holder = wait_for(lambda: lease_holder_pid(sqlite_db), 20)
    wait_for(lambda: scrape(relay.url)[("relay_dispatcher_active", ())] == 1, 10)
    os.kill(holder, signal.SIGKILL)
    wait_for(lambda: len(relay.workers()) == 2 and holder not in relay.workers(), 20)
    relay.wait_ready()
    # Another worker takes the lease over; the dead one's 1 left the sum (child_exit), so the
    # gauge is 1 again, not 2, and the dead worker's counts are still in the totals.
    wait_for(lambda: (lease_holder_pid(sqlite_db) or holder) != holder, 20)
    for _ in range(4):
        samples = scrape(relay.url)
        assert samples[("relay_dispatcher_active", ())] == 1
        assert parked_count(samples) == sent
    send_callbacks(relay.url, 10)
    assert parked_count(scrape(relay.url)) == sent + 10


def test_the_worker_role_serves_its_own_metrics(tmp_path, sqlite_db, processes):
    app = create_app(make_config(tmp_path, DATABASE_URL=sqlite_db))
    try:
        with app.app_context():
            messaging.enqueue(
                db.session,
                [
                    {"from": "+15555550100", "to": f"+1555555{i:04d}", "text": "hi"}
                    for i in range(7)
                ],
            )
            db.session.commit()
    finally:
        close_app(app)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tmp_path / "worker-metrics"
    folder.mkdir()
    with SandboxServer(scenario="perfect", seed=3) as sandbox:
        env = relay_env(
            sqlite_db,
            tmp_path / "journal",
            DISPATCH="worker",
            CATAPULT_API_URL=sandbox.url,
            CATAPULT_USER_ID=sandbox.user_id,
            CATAPULT_API_TOKEN=sandbox.token,
            CATAPULT_API_SECRET=sandbox.secret,
            WORKER_METRICS_BIND=f"127.0.0.1:{port}",
            PROMETHEUS_MULTIPROC_DIR=str(folder),
        )
        worker = processes.worker(env, "dispatch")
        url = f"http://127.0.0.1:{port}"

        def accepted():
            try:
                samples = scrape(url)
            except requests.RequestException:
                return None
            key = ("relay_carrier_sends_total", (("outcome", "accepted"),))
            return samples if samples.get(key) == 7 else None

        samples = wait_for(accepted, 30)
        assert samples[("relay_dispatcher_active", ())] == 1
        assert samples[("relay_dispatcher_lease_acquired_total", ())] == 1
        assert samples[("relay_carrier_request_seconds_count", ())] >= 1
        worker.stop()
    batches = [line for line in json_lines(worker.log_path) if line["message"] == "dispatch batch"]
    assert sum(line["size"] for line in batches) == 7
    assert {n for line in batches for n in line["from_numbers"]} == {"***0100"}
