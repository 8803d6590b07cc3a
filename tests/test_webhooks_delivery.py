"""Delivery over real HTTP to a receiver that checks every signature itself: retries on the
schedule with a stable webhook-id, order per message, failure for good and replay, the
address checked again at delivery time, no redirects, several workers without overlap."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from app.extensions import db
from app.webhooks.worker import WorkerThread
from tests.test_callbacks import deliver, event, make_message
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.both_backends

RECEIPT = {"deliveryState": "delivered", "deliveryCode": 0}


@pytest.fixture
def hooks(app):
    """The app with loopback endpoints allowed, a short schedule and a short timeout."""
    app.config.update(
        WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_RETRY_SCHEDULE=(0, 0, 0), WEBHOOK_TIMEOUT_S=0.5
    )
    return app


def subscribe(client, auth, receiver: Receiver, events=("*",)) -> str:
    response = client.post(
        "/api/webhooks", json={"url": receiver.url, "events": list(events)}, headers=auth
    )
    assert response.status_code == 201, response.get_json()
    receiver.secret = response.get_json()["secret"]
    return response.get_json()["id"]


def deliveries(client, auth, webhook_id) -> list[dict]:
    """The endpoint's deliveries, oldest first."""
    response = client.get(f"/api/webhooks/{webhook_id}/deliveries?limit=500", headers=auth)
    assert response.status_code == 200
    return list(reversed(response.get_json()["items"]))


def run_workers(app, until, workers=1, threads=2, timeout=20.0, **config):
    """Delivery workers running until ``until()`` holds (or the timeout), then stopped."""
    with app.app_context():
        engine = db.engine
    running = [
        WorkerThread(engine, {**app.config, **config}, threads=threads).start()
        for _ in range(workers)
    ]
    try:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the deliveries did not settle in time"
            time.sleep(0.05)
    finally:
        for worker in running:
            worker.stop_event.set()
        for worker in running:
            worker.stop()


def settled(client, auth, webhook_id, count):
    def check():
        found = deliveries(client, auth, webhook_id)
        return len(found) >= count and all(d["status"] != "pending" for d in found)

    return check


def attempts_metric(outcome: str) -> float:
    return REGISTRY.get_sample_value("relay_webhook_attempts_total", {"outcome": outcome}) or 0


def test_signed_and_retried_with_the_same_webhook_id(hooks, client, auth, cb_auth):
    answers = {1: 500, 2: "timeout", 3: 204}
    with Receiver(lambda msg_id, nth, body: answers[nth], hang_s=2.0) as receiver:
        webhook_id = subscribe(client, auth, receiver)
        message_id = make_message(hooks)
        assert deliver(client, cb_auth, event(tag=message_id)).status_code == 200
        run_workers(hooks, settled(client, auth, webhook_id, 1))
        arrivals = list(receiver.arrivals)
    assert [a.answer for a in arrivals] == [500, "timeout", 204]
    assert len({a.msg_id for a in arrivals}) == 1  # one notification, three attempts
    assert all(a.problem is None for a in arrivals), [a.problem for a in arrivals]
    assert arrivals[0].type == "message.sent" and arrivals[0].message_id == message_id
    [found] = deliveries(client, auth, webhook_id)
    assert found["eventId"] == arrivals[0].msg_id
    assert (found["status"], found["attemptCount"], found["lastStatusCode"]) == (
        "succeeded",
        3,
        204,
    )
    log = found["attempts"]
    assert [a["statusCode"] for a in log] == [500, None, 204]
    assert log[0]["error"] == "HTTP 500" and "Timeout" in log[1]["error"]
    assert log[0]["nextAttemptAt"] and log[1]["nextAttemptAt"] and log[2]["nextAttemptAt"] is None
    assert all(a["latencyMs"] >= 0 for a in log)
    assert found["payload"] == arrivals[-1].body


def test_in_order_per_message_and_no_wait_across_messages(hooks, client, auth, cb_auth):
    slow, quick = make_message(hooks), make_message(hooks, carrier_id="m-bbbbbbbbbbbbbbbbbbbbbbb")

    def answer(msg_id, nth, body):
        first = (body["data"]["id"], body["type"]) == (slow, "message.sent")
        return 500 if first and nth < 3 else 200

    with Receiver(answer) as receiver:
        webhook_id = subscribe(client, auth, receiver)
        deliver(client, cb_auth, event(tag=slow))
        deliver(client, cb_auth, event(tag=slow, **RECEIPT))
        deliver(client, cb_auth, event(tag=quick, carrier_id="m-bbbbbbbbbbbbbbbbbbbbbbb"))
        run_workers(hooks, settled(client, auth, webhook_id, 3), WEBHOOK_RETRY_SCHEDULE=(0, 1, 1))
        arrivals = list(receiver.arrivals)
    seen = [(a.message_id, a.type, a.answer) for a in arrivals]
    slow_sent_ok = seen.index((slow, "message.sent", 200))
    assert [s for s in seen if s[0] == slow and s[1] == "message.sent"][0][2] == 500
    # The later change of the same message waited for the earlier one's success...
    assert all(i > slow_sent_ok for i, s in enumerate(seen) if s[:2] == (slow, "message.delivered"))
    # ...while the other message's notification went at once.
    assert seen.index((quick, "message.sent", 200)) < slow_sent_ok
    assert all(a.problem is None for a in arrivals)


def test_down_for_the_whole_schedule_then_replayed(hooks, client, auth, cb_auth):
    failed_before = attempts_metric("failed")
    with Receiver() as receiver:
        webhook_id = subscribe(client, auth, receiver)
        receiver.down()  # connection refused, every attempt
        message_id = make_message(hooks)
        deliver(client, cb_auth, event(tag=message_id))
        deliver(client, cb_auth, event(tag=message_id, **RECEIPT))
        run_workers(hooks, settled(client, auth, webhook_id, 2))
        found = deliveries(client, auth, webhook_id)
        assert [(d["type"], d["status"], d["attemptCount"]) for d in found] == [
            ("message.sent", "failed", 3),
            ("message.delivered", "failed", 3),
        ]
        assert all("could not connect" in a["error"] for d in found for a in d["attempts"])
        assert attempts_metric("failed") == failed_before + 2
        metrics = client.get("/metrics").get_data(as_text=True)
        assert "relay_webhook_queue_depth 0.0" in metrics
        receiver.up()
        for d in found:
            retry = f"/api/webhooks/{webhook_id}/deliveries/{d['id']}/retry"
            response = client.post(retry, headers=auth)
            assert response.status_code == 202 and response.get_json()["status"] == "pending"
        assert "relay_webhook_queue_depth 2.0" in client.get("/metrics").get_data(as_text=True)
        run_workers(hooks, settled(client, auth, webhook_id, 2))
        arrivals = list(receiver.arrivals)
    assert [(a.msg_id, a.type) for a in arrivals] == [(d["eventId"], d["type"]) for d in found]
    assert all(a.problem is None for a in arrivals)
    again = deliveries(client, auth, webhook_id)
    assert [(d["status"], d["attemptCount"]) for d in again] == [("succeeded", 4)] * 2


def test_the_address_is_checked_again_at_delivery_time(hooks, client, auth, cb_auth):
    """An endpoint saved while its name resolved to a public address, which now resolves to
    loopback (here: saved with WEBHOOK_ALLOW_PRIVATE, delivered without): nothing is sent."""
    with Receiver() as receiver:
        webhook_id = subscribe(client, auth, receiver)
        client.patch(
            f"/api/webhooks/{webhook_id}",
            json={"url": receiver.url.replace("127.0.0.1", "localhost")},
            headers=auth,
        )
        deliver(client, cb_auth, event(tag=make_message(hooks)))
        run_workers(hooks, settled(client, auth, webhook_id, 1), WEBHOOK_ALLOW_PRIVATE=False)
        assert receiver.arrivals == []
    [found] = deliveries(client, auth, webhook_id)
    assert found["status"] == "failed"
    assert all("127.0.0.1, a loopback address: refused" in a["error"] for a in found["attempts"])


def test_redirects_are_not_followed(hooks, client, auth, cb_auth):
    with Receiver(lambda msg_id, nth, body: 307) as receiver:
        webhook_id = subscribe(client, auth, receiver)
        deliver(client, cb_auth, event(tag=make_message(hooks)))
        run_workers(hooks, settled(client, auth, webhook_id, 1))
        paths = [a.path for a in receiver.arrivals]
    assert paths == ["/hooks/relay"] * 3  # one request per attempt, never the Location
    [found] = deliveries(client, auth, webhook_id)
    assert found["status"] == "failed" and found["lastError"] == "HTTP 307"


def test_several_workers_share_the_work_and_never_send_twice(hooks, client, auth, cb_auth):
    with Receiver() as receiver:
        webhook_id = subscribe(client, auth, receiver)
        for i in range(24):
            carrier_id = f"m-many{i:019d}"
            deliver(
                client,
                cb_auth,
                event(tag=make_message(hooks, carrier_id=carrier_id), carrier_id=carrier_id),
            )
        run_workers(hooks, settled(client, auth, webhook_id, 24), workers=3, threads=3)
        arrivals = list(receiver.arrivals)
    assert len(arrivals) == 24 and len({a.msg_id for a in arrivals}) == 24
    assert all(a.problem is None for a in arrivals)
