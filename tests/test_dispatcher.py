"""The dispatcher: batching, the carrier payload, outcomes, pacing, exactly-once."""

from __future__ import annotations

import collections
import json
import random
from datetime import timedelta

import pytest
import requests

from app import messaging
from app.dispatcher import Dispatcher
from app.extensions import db
from app.models import CallbackEvent
from app.pacing import Gcra
from tests.dispatching import (
    BASE,
    Carrier,
    Clock,
    Response,
    WallClock,
    advance_db,
    load,
    make_dispatcher,
    queue,
    refused,
    sends,
)

pytestmark = pytest.mark.both_backends


# ---------------------------------------------------------------------- batching + payload


def test_batches_of_50_oldest_first(app):
    ids = queue(app, 120)
    dispatcher, carrier = make_dispatcher(app)
    before = sends("accepted")
    assert [dispatcher.run_once() for _ in range(4)] == [50, 50, 20, 0]
    assert [len(body) for body in carrier.requests] == [50, 50, 20]
    assert [m["tag"] for m in carrier.sent] == sorted(ids)
    rows = load(app)
    assert {m.status for m in rows.values()} == {"accepted"}
    assert len({m.carrier_message_id for m in rows.values()}) == 120
    assert all(m.attempts == 1 and m.claimed_by is None for m in rows.values())
    assert sends("accepted") - before == 120


def test_exact_carrier_payload(make_app):
    app = make_app(
        CALLBACK_USERNAME="cb user",
        CALLBACK_PASSWORD="p@ss:w/rd%",
        CALLBACK_TIMEOUT_MS=8000,
        RECEIPT_REQUESTED="all",
    )
    sms_default = queue(app, 1, tag="users-own-tag")[0]
    sms_custom = queue(
        app, 1, receiptRequested="error", callbackHttpMethod="GET", callbackTimeout=2000
    )[0]
    mms = queue(app, 1, media=["https://media.example/cat.jpg"], text=None, receiptRequested="all")[
        0
    ]
    dispatcher, carrier = make_dispatcher(app)
    assert dispatcher.run_once() == 3
    sent = {m["tag"]: m for m in carrier.sent}
    cb = "http://cb%20user:p%40ss%3Aw%2Frd%25@relay.test/callbacks/catapult"
    fb = "http://cb%20user:p%40ss%3Aw%2Frd%25@fallback.relay.test/callbacks/catapult/fallback"
    assert sent[sms_default] == {
        "from": "+15555550100",
        "to": "+15555560000",
        "text": "hello 0",
        "callbackUrl": cb,
        "fallbackUrl": fb,
        "callbackHttpMethod": "POST",
        "callbackTimeout": 8000,
        "tag": sms_default,
        "receiptRequested": "all",
    }
    assert sent[sms_custom]["receiptRequested"] == "error"
    assert sent[sms_custom]["callbackHttpMethod"] == "GET"
    assert sent[sms_custom]["callbackTimeout"] == 2000
    # MMS: media, no text key for a null text, and never receiptRequested.
    assert sent[mms]["media"] == ["https://media.example/cat.jpg"]
    assert "receiptRequested" not in sent[mms] and "text" not in sent[mms]
    assert "media" not in sent[sms_default]
    # What is stored for the timeline has the credentials redacted.
    rows = load(app)
    stored = rows[sms_default].carrier_request
    assert stored["callbackUrl"] == "http://***:***@relay.test/callbacks/catapult"
    assert stored["fallbackUrl"] == "http://***:***@fallback.relay.test/callbacks/catapult/fallback"
    assert rows[sms_default].tag == "users-own-tag"  # the user's tag is kept, not sent
    for message in rows.values():
        dumped = json.dumps([message.carrier_request, message.carrier_response])
        assert "p%40ss" not in dumped and "p@ss" not in dumped


def test_single_message_goes_as_an_object(app):
    queue(app, 1)
    dispatcher, carrier = make_dispatcher(app)
    assert dispatcher.run_once() == 1
    assert isinstance(carrier.requests[0], dict)


# ---------------------------------------------------------------------- outcomes


def rate_limited(_payloads):
    return Response(
        403,
        {
            "category": "limit",
            "code": "message-rate-limit",
            "message": "You can send 1 messages per 1 seconds",
        },
    )


@pytest.mark.parametrize(
    "script,status,code",
    [
        (None, "accepted", None),
        (
            lambda p: Response(
                400,
                {
                    "category": "bad-request",
                    "code": "validation-error",
                    "message": "Invalid phone number",
                },
            ),
            "rejected",
            "validation-error",
        ),
        (rate_limited, "queued", "message-rate-limit"),
        (refused, "queued", "connection-refused"),
        (lambda p: requests.exceptions.ReadTimeout("slow"), "unknown", "read-timeout"),
        (
            lambda p: Response(
                503,
                {
                    "category": "unavailable",
                    "code": "message-gateway-unavailable",
                    "message": "Gateway unavailable",
                },
            ),
            "unknown",
            "message-gateway-unavailable",
        ),
    ],
)
def test_outcome_classes_map_to_status(app, script, status, code):
    [message_id] = queue(app, 1)
    wall = WallClock()
    dispatcher, carrier = make_dispatcher(app, wall_clock=wall)
    carrier.script = script
    outcome = {
        "accepted": "accepted",
        "rejected": "rejected",
        "queued": "retry",
        "unknown": "unknown",
    }[status]
    before = sends(outcome)
    assert dispatcher.run_once() == 1
    message = load(app)[message_id]
    assert message.status == status
    assert message.claimed_by is None
    assert sends(outcome) - before == 1
    if status == "accepted":
        assert message.carrier_message_id.startswith("m-") and message.error is None
    else:
        assert message.error["code"] == code and message.error["message"]
        assert message.carrier_message_id is None
    if status == "queued":
        # Back to the queue, not before the backoff (attempt 1: 0.5..1 s, database time).
        assert dispatcher.db_time() + timedelta(seconds=0.5) <= message.next_attempt_at
        assert message.next_attempt_at <= dispatcher.db_time() + timedelta(seconds=1)
    assert message.carrier_request["tag"] == message_id
    if status == "rejected":
        assert message.final_at is not None


def test_retry_waits_for_backoff_then_sends_again(app):
    [message_id] = queue(app, 1)
    wall = WallClock()
    dispatcher, carrier = make_dispatcher(app, wall_clock=wall)
    carrier.script = refused
    dispatcher.run_once()
    carrier.script = None
    assert dispatcher.run_once() == 0  # not before next_attempt_at
    advance_db(app, 1.01)
    assert dispatcher.run_once() == 1
    message = load(app)[message_id]
    assert (message.status, message.attempts) == ("accepted", 2)
    assert len(carrier.requests) == 2


def test_retry_honours_retry_after_and_auth_errors_wait_long(app):
    [message_id] = queue(app, 1)
    wall = WallClock()
    dispatcher, carrier = make_dispatcher(app, wall_clock=wall)
    carrier.script = lambda p: Response(
        401, {"category": "authentication", "code": "user-access-denied"}
    )
    dispatcher.run_once()
    message = load(app)[message_id]
    assert message.status == "queued"
    assert message.next_attempt_at == dispatcher.db_time() + timedelta(seconds=300)


def test_retry_delay_is_exponential_jittered_capped(app):
    dispatcher, _ = make_dispatcher(app, rng=random.Random(7))
    for attempts, low, high in [(1, 0.5, 1), (2, 1, 2), (3, 2, 4), (7, 30, 60), (40, 30, 60)]:
        delays = [dispatcher.retry_delay(attempts, None) for _ in range(50)]
        assert all(low <= d <= high for d in delays), (attempts, delays)
        assert len(set(delays)) > 1  # jittered
    assert dispatcher.retry_delay(1, 12.5) == 12.5  # the carrier's wait wins when longer


def test_rate_limit_pauses_the_account(app):
    queue(app, 3)
    clock = Clock()
    dispatcher, carrier = make_dispatcher(app, clock=clock)
    carrier.script = rate_limited
    dispatcher.run_once()
    carrier.script = None
    assert dispatcher.pacer.account.available(clock(), 50) == 0
    clock.advance(1.01)
    assert dispatcher.pacer.account.available(clock(), 50) == 50


def test_unknown_is_never_resent(app):
    [message_id] = queue(app, 1)
    wall = WallClock()
    dispatcher, carrier = make_dispatcher(app, wall_clock=wall)
    carrier.script = lambda p: requests.exceptions.ReadTimeout("slow")
    dispatcher.run_once()
    carrier.script = None
    for _ in range(3):
        advance_db(app, 120)
        assert dispatcher.run_once() == 0
    assert len(carrier.requests) == 1
    assert load(app)[message_id].status == "unknown"


def test_batch_items_are_recorded_one_by_one_in_one_commit(app):
    ids = queue(app, 3)
    dispatcher, carrier = make_dispatcher(app)
    carrier.script = lambda p: Response(
        202,
        [
            {"result": "accepted", "location": f"{BASE}/v1/users/u-test/messages/m-1"},
            {
                "result": "error",
                "error": {"category": "bad-request", "code": "blank-property", "message": "blank"},
            },
            {"result": "error", "error": {"category": "limit", "code": "message-rate-limit"}},
        ],
    )
    assert dispatcher.run_once() == 3
    rows = load(app)
    assert [rows[i].status for i in ids] == ["accepted", "rejected", "queued"]
    assert rows[ids[0]].carrier_message_id == "m-1"
    assert rows[ids[1]].error["code"] == "blank-property"


def test_client_crash_makes_messages_unknown_not_lost(app):
    [message_id] = queue(app, 1)

    class Broken:
        def send(self, payloads):
            raise RuntimeError("bug")

    dispatcher = Dispatcher(app, client=Broken())
    assert dispatcher.run_once() == 1
    message = load(app)[message_id]
    assert (message.status, message.error["code"]) == ("unknown", "client-error")


def test_failed_record_leaves_no_row_sending(app, monkeypatch):
    [message_id] = queue(app, 1)
    dispatcher, carrier = make_dispatcher(app)

    def boom(*args, **kwargs):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(messaging, "record_accepted", boom)
    with pytest.raises(RuntimeError):
        dispatcher.run_once()
    assert load(app)[message_id].status == "sending"
    monkeypatch.undo()
    assert dispatcher.run_once() == 0  # the next iteration settles it: it may have gone
    message = load(app)[message_id]
    assert (message.status, message.error["code"]) == ("unknown", "dispatcher-error")
    assert len(carrier.requests) == 1


def test_parked_event_sweep_runs_every_iteration(app):
    with app.app_context():
        [message] = messaging.enqueue(
            db.session, [{"from": "+15555550100", "to": "+15555550101", "text": "x"}]
        )
        message.status = "accepted"
        message.carrier_message_id = "m-" + "p" * 23
        db.session.add(
            CallbackEvent(
                via="primary",
                method="POST",
                raw='{"state": "sent"}',
                parked=True,
                carrier_message_id=message.carrier_message_id,
                state="sent",
            )
        )
        db.session.commit()
        message_id = message.id
    dispatcher, _ = make_dispatcher(app)
    assert dispatcher.run_once() == 0
    assert load(app)[message_id].status == "sent"


# ---------------------------------------------------------------------- pacing


def window_max(times: list[float], window: float = 10.0) -> int:
    """The most sends inside any (t - window, t] interval."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("mps,count,step", [(20, 200, None), (500, 2000, 0.05)])
def test_pacing_rate_within_2_percent_and_never_over_the_carrier_window(make_app, mps, count, step):
    app = make_app(CATAPULT_MPS=mps)
    queue(app, count)
    clock = Clock()
    carrier = Carrier(clock=clock)
    dispatcher, _ = make_dispatcher(app, carrier, clock=clock)
    handled = 0
    for _ in range(5000):
        handled += dispatcher.run_once()
        if handled == count:
            break
        clock.advance(step if step is not None else max(dispatcher.next_delay(), 1e-4))
    assert handled == count
    times = []
    for t, body in zip(carrier.times, carrier.requests, strict=True):
        times.extend([t] * (len(body) if isinstance(body, list) else 1))
    achieved = (len(times) - 1) / (times[-1] - times[0])
    assert abs(achieved / mps - 1) < 0.02, achieved
    # The carrier averages over 10 s and counts the attempted send (catapult-v1.md).
    assert window_max(times) <= 10 * mps
    assert max(len(b) if isinstance(b, list) else 1 for b in carrier.requests) <= 50


def test_per_number_pacing_does_not_starve_other_numbers(make_app):
    app = make_app(CATAPULT_MPS_PER_NUMBER=1)
    busy = queue(app, 250, **{"from": "+15555550001"})  # older, more than one claim window
    quiet = queue(app, 5, **{"from": "+15555550002"})
    clock = Clock()
    carrier = Carrier(clock=clock)
    dispatcher, _ = make_dispatcher(app, carrier, clock=clock)
    start = clock()
    while clock() - start < 20:
        dispatcher.run_once()
        clock.advance(max(dispatcher.next_delay(), 1e-4))
    sent_at = collections.defaultdict(list)
    for t, body in zip(carrier.times, carrier.requests, strict=True):
        for m in body if isinstance(body, list) else [body]:
            sent_at[m["from"]].append(t)
    # The quiet number went at its own pace from the start (5 messages in about 4 s)...
    assert len(sent_at["+15555550002"]) == 5
    assert sent_at["+15555550002"][-1] - start < 5
    # ...while the busy one went at 1 message/s and its backlog stayed queued.
    busy_times = sent_at["+15555550001"]
    assert 19 <= len(busy_times) <= 22
    rate = (len(busy_times) - 1) / (busy_times[-1] - busy_times[0])
    assert abs(rate - 1) < 0.02
    rows = load(app)
    assert sum(rows[i].status == "queued" for i in busy) == 250 - len(busy_times)
    assert all(rows[i].status == "accepted" for i in quiet)


def test_gcra_unpaced_and_tolerance():
    bucket = Gcra(0)
    assert bucket.available(0, 50) == 50
    bucket.take(0, 50)
    assert bucket.available(0, 50) == 50 and bucket.wait(0) == 0
    bucket = Gcra(100)  # interval ~10.1 ms, tolerance 50 ms: a burst of 5 at most
    assert bucket.available(0.0, 50) == 5
    bucket.take(0.0, 5)
    assert bucket.available(0.0, 50) == 0
    assert bucket.wait(0.0) == pytest.approx(5 / 99 - 0.05)
