"""End to end: the relay sends through the Catapult sandbox in its ``hostile`` scenario
(duplicates, events out of order and before the send's answer, timeouts, fallbacks), and a
receiver that fails some attempts must still get every status change of every message, at
least once, in order per message, ending at the status the relay has."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
import requests
from sqlalchemy import select

from app.extensions import db
from app.models import STATUS_RANK
from app.sandbox.server import SandboxServer
from app.webhooks.models import NOTIFIED_STATUSES, WebhookDelivery
from app.webhooks.worker import WorkerThread
from tests.test_e2e import HEADERS, Relay, traffic
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.both_backends


def flaky(msg_id: str, nth: int, body: dict):
    """Every third notification fails its first attempt (500, or no answer in time)."""
    spin = sum(map(ord, msg_id))
    if nth == 1 and spin % 3 == 0:
        return "timeout" if spin % 2 else 500
    return 200


def pending(relay: Relay) -> int:
    with relay.app.app_context():
        rows = db.session.scalars(
            select(WebhookDelivery.id).where(WebhookDelivery.status == "pending")
        ).all()
        return len(rows)


def test_every_change_reaches_the_receiver_in_order(tmp_path, db_url):
    config = {
        "WEBHOOK_ALLOW_PRIVATE": True,
        "WEBHOOK_RETRY_SCHEDULE": (0, 1, 1, 1, 1, 1),
        "WEBHOOK_TIMEOUT_S": 0.5,
    }
    with SandboxServer(scenario="hostile", seed=11) as sandbox, Receiver(flaky, 1.0) as receiver:
        relay = Relay(tmp_path, db_url, sandbox, **config)
        with relay.app.app_context():
            engine = db.engine
        worker = WorkerThread(engine, relay.app.config, threads=4).start()
        try:
            made = requests.post(
                f"{relay.url}/api/webhooks",
                json={"url": receiver.url, "events": ["*"]},
                headers=HEADERS,
                timeout=10,
            )
            assert made.status_code == 201
            receiver.secret = made.json()["secret"]
            traffic(relay)
            relay.wait_dispatched()
            sandbox.wait_idle(timeout=60)
            deadline = time.monotonic() + 60
            while pending(relay) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert pending(relay) == 0
            messages = {m.id: m for m in relay.messages()}
            with relay.app.app_context():
                rows = db.session.scalars(
                    select(WebhookDelivery).order_by(WebhookDelivery.id)
                ).all()
                db.session.expunge_all()
        finally:
            worker.stop()
            relay.close()
        arrivals = receiver.accepted()
        everything = list(receiver.arrivals)

    assert all(a.problem is None for a in everything), {a.problem for a in everything}
    assert any(a.answer != 200 for a in everything), "some attempts should have failed"
    assert all(d.status == "succeeded" for d in rows)
    first_arrival = {}
    for index, arrival in enumerate(arrivals):
        first_arrival.setdefault(arrival.msg_id, index)
    assert {d.uid for d in rows} <= set(first_arrival)  # every change arrived at least once
    by_message = defaultdict(list)
    for d in rows:
        by_message[d.message_id].append(d)
    told = {m for m, msg in messages.items() if msg.status in NOTIFIED_STATUSES}
    assert set(by_message) == told and len(told) >= 63
    for message_id, notified in by_message.items():
        statuses = [d.type.removeprefix("message.") for d in notified]
        # In the order of the changes, each a move forward, the last the relay's status.
        assert [first_arrival[d.uid] for d in notified] == sorted(
            first_arrival[d.uid] for d in notified
        ), statuses
        ranks = [STATUS_RANK[s] for s in statuses]
        assert ranks == sorted(ranks) and len(set(statuses)) == len(statuses), statuses
        assert statuses[-1] == messages[message_id].status, (message_id, statuses)
