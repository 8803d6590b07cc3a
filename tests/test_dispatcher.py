"""The dispatcher: batching, the carrier payload, outcomes, pacing, the lease, exactly-once."""

from __future__ import annotations

import collections
import itertools
import json
import random
import signal
import threading
import time
from datetime import timedelta

import pytest
import requests
from prometheus_client import REGISTRY
from requests.structures import CaseInsensitiveDict
from sqlalchemy import func, select, update

from app import create_app, messaging
from app import dispatcher as dispatcher_module
from app.catapult import CatapultClient
from app.dispatcher import (
    LEASE_NAME,
    LEASE_POLL,
    LEASE_TTL,
    Dispatcher,
    Gcra,
    start_inline_dispatcher,
)
from app.extensions import db
from app.models import CallbackEvent, Lease, Message, utcnow
from tests.conftest import make_config

BASE = "http://carrier.test"

pytestmark = pytest.mark.both_backends


class Clock:
    """A fake monotonic clock."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WallClock:
    """A fake wall clock (aware UTC datetimes) for lease expiry and retry times."""

    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Response:
    def __init__(self, status: int, body=None, headers=None, text=None):
        self.status_code = status
        self.headers = CaseInsensitiveDict(headers or {})
        self.text = text if text is not None else ("" if body is None else json.dumps(body))


class Carrier:
    """A fake carrier session: accepts everything unless scripted, records every request."""

    _ids = itertools.count(1)  # shared: carrier ids are unique across fake carriers too

    def __init__(self, clock=None, delay: float = 0.0):
        self.requests: list[dict] = []
        self.times: list[float] = []
        self.script = None  # payloads -> Response or exception
        self.clock = clock
        self.delay = delay
        self._lock = threading.Lock()

    def request(self, method, url, json=None, **kwargs):
        assert method == "POST" and url == f"{BASE}/v1/users/u-test/messages"
        assert kwargs["timeout"] and kwargs["auth"] == ("t-test", "s-test")
        if self.delay:
            time.sleep(random.uniform(0, self.delay))
        with self._lock:
            self.requests.append(json)
            if self.clock is not None:
                self.times.append(self.clock())
            payloads = json if isinstance(json, list) else [json]
            if self.script is not None:
                answer = self.script(payloads)
                if isinstance(answer, BaseException):
                    raise answer
                return answer
            locations = [
                f"{BASE}/v1/users/u-test/messages/m-{next(self._ids):023d}" for _ in payloads
            ]
        if isinstance(json, list):
            return Response(
                202,
                [{"result": "accepted", "location": loc} for loc in locations],
                {"Content-Type": "application/json"},
            )
        return Response(201, headers={"Location": locations[0]})

    @property
    def sent(self) -> list[dict]:
        """Every message object the carrier received, in order."""
        out = []
        for body in self.requests:
            out.extend(body if isinstance(body, list) else [body])
        return out


@pytest.fixture
def make_app(tmp_path, db_url):
    apps = []

    def build(**overrides):
        app = create_app(make_config(tmp_path, DATABASE_URL=db_url, **overrides))
        with app.app_context():
            db.create_all()
        apps.append(app)
        return app

    yield build
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def make_dispatcher(app, carrier=None, **kwargs) -> tuple[Dispatcher, Carrier]:
    carrier = carrier or Carrier()
    client = CatapultClient(BASE, "u-test", "t-test", "s-test", session=carrier, timeout=5)
    return Dispatcher(app, client=client, **kwargs), carrier


def queue(app, count: int = 1, **fields) -> list[str]:
    items = [
        {"from": "+15555550100", "to": f"+1555556{i:04d}", "text": f"hello {i}", **fields}
        for i in range(count)
    ]
    with app.app_context():
        ids = [m.id for m in messaging.enqueue(db.session, items)]
        db.session.commit()
    return ids


def load(app, ids=None) -> dict[str, Message]:
    with app.app_context():
        stmt = select(Message)
        if ids is not None:
            stmt = stmt.where(Message.id.in_(ids))
        rows = {m.id: m for m in db.session.scalars(stmt)}
        db.session.expunge_all()
        return rows


def drain(dispatcher: Dispatcher, clock: Clock | None = None, limit: int = 5000) -> int:
    """Run iterations until nothing is handled (advancing a fake clock by the loop's delay)."""
    total = 0
    for _ in range(limit):
        handled = dispatcher.run_once()
        total += handled
        if clock is not None:
            clock.advance(max(dispatcher.next_delay(), 1e-4))
        elif not handled:
            return total
    return total


def sends(outcome: str) -> float:
    return REGISTRY.get_sample_value("relay_carrier_sends_total", {"outcome": outcome}) or 0.0


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


def refused(_payloads):
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    return requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "refused")))


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
        # Back to the queue, not before the backoff (attempt 1: 0.5..1 s).
        assert wall.now + timedelta(seconds=0.5) <= message.next_attempt_at
        assert message.next_attempt_at <= wall.now + timedelta(seconds=1)
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
    wall.advance(1.01)
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
    assert message.next_attempt_at == wall.now + timedelta(seconds=300)


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
    assert dispatcher.account.available(clock(), 50) == 0
    clock.advance(1.01)
    assert dispatcher.account.available(clock(), 50) == 50


def test_unknown_is_never_resent(app):
    [message_id] = queue(app, 1)
    wall = WallClock()
    dispatcher, carrier = make_dispatcher(app, wall_clock=wall)
    carrier.script = lambda p: requests.exceptions.ReadTimeout("slow")
    dispatcher.run_once()
    carrier.script = None
    for _ in range(3):
        wall.advance(120)
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


# ---------------------------------------------------------------------- lease


def lease(app) -> Lease | None:
    with app.app_context():
        row = db.session.get(Lease, LEASE_NAME)
        db.session.expunge_all()
        return row


def set_lease_expiry(app, when) -> None:
    with app.app_context():
        db.session.execute(update(Lease).values(expires_at=when))
        db.session.commit()


def test_takeover_within_ten_seconds_by_design():
    assert LEASE_TTL + LEASE_POLL < 10


def test_only_the_lease_holder_sends(app):
    queue(app, 3)
    wall = WallClock()
    first, first_carrier = make_dispatcher(app, wall_clock=wall, holder="first")
    second, second_carrier = make_dispatcher(app, wall_clock=wall, holder="second")
    assert first.run_once() == 3
    assert lease(app).holder == "first"
    queue(app, 2)
    assert second.run_once() == 0
    assert not second.holding and second_carrier.requests == []
    wall.advance(LEASE_TTL - 0.5)  # the holder renews every iteration...
    assert first.run_once() == 2
    wall.advance(LEASE_TTL - 0.5)  # ...so at no point has its lease expired
    queue(app, 1)
    assert second.run_once() == 0
    assert second_carrier.requests == [] and len(first_carrier.requests) == 2


def test_standby_takes_over_after_expiry_and_settles_the_dead_holders_claims(app):
    queue(app, 1)
    wall = WallClock()
    first, _ = make_dispatcher(app, wall_clock=wall, holder="first")
    second, second_carrier = make_dispatcher(app, wall_clock=wall, holder="second")
    assert first.run_once() == 1
    # The first holder dies mid-request: two rows claimed, sent or not, nobody knows.
    in_flight = queue(app, 2)
    waiting = queue(app, 2)
    with app.app_context():
        db.session.execute(
            update(Message)
            .where(Message.id.in_(in_flight))
            .values(status="sending", claimed_by="first", attempts=1)
        )
        db.session.commit()
    wall.advance(LEASE_TTL - 0.1)
    assert second.run_once() == 0  # not expired yet
    wall.advance(0.2)
    assert second.run_once() == 2
    assert second.holding and lease(app).holder == "second"
    rows = load(app)
    assert [rows[i].status for i in in_flight] == ["unknown", "unknown"]
    assert rows[in_flight[0]].error["code"] == "dispatcher-lost"
    assert [m["tag"] for m in second_carrier.sent] == waiting  # in-flight rows never resent
    # The old holder comes back: it has lost the lease and sends nothing.
    queue(app, 1)
    first_before = first.client.session.requests[:]
    assert first.run_once() == 0
    assert not first.holding and first.client.session.requests == first_before


def test_holder_that_lost_the_lease_does_not_send(app):
    queue(app, 1)
    first, first_carrier = make_dispatcher(app, holder="first")
    assert first.run_once() == 1
    with app.app_context():  # someone else holds it now (first was paused past its TTL)
        db.session.execute(
            update(Lease).values(holder="other", expires_at=utcnow() + timedelta(seconds=30))
        )
        db.session.commit()
    queue(app, 5)
    assert first.run_once() == 0
    assert len(first_carrier.requests) == 1
    assert not first.holding
    assert sum(m.status == "queued" for m in load(app).values()) == 5


def test_clean_stop_releases_the_lease(app):
    first, _ = make_dispatcher(app, holder="first")
    second, _ = make_dispatcher(app, holder="second")
    stop = threading.Event()
    stop.set()
    first.run_once()
    first.run_forever(stop)  # stops at once and lets go
    assert not first.holding
    queue(app, 1)
    assert second.run_once() == 1


def test_lease_row_is_created_once(app):
    first, _ = make_dispatcher(app, holder="first")
    second, _ = make_dispatcher(app, holder="second")
    first.run_once()
    second.run_once()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Lease)) == 1


def test_two_dispatchers_racing_send_each_message_exactly_once(make_app):
    app_one = make_app()
    app_two = make_app()  # a second app (its own engine and pool) on the same SQLite file
    assert app_two.config["DATABASE_URL"] == app_one.config["DATABASE_URL"]
    ids = queue(app_one, 200)
    carrier = Carrier(delay=0.004)  # requests outlast the tiny lease: it keeps changing hands
    one, _ = make_dispatcher(app_one, carrier, holder="one", lease_ttl=0.002, max_batch=5)
    two, _ = make_dispatcher(app_two, carrier, holder="two", lease_ttl=0.002, max_batch=5)
    barrier = threading.Barrier(2)
    handled = collections.Counter()
    errors: list[BaseException] = []

    def loop(dispatcher: Dispatcher) -> None:
        deadline = time.monotonic() + 20
        barrier.wait()
        try:
            while time.monotonic() < deadline:
                n = dispatcher.run_once()
                handled[dispatcher.holder] += n
                if not n:
                    with app_one.app_context():
                        left = db.session.scalar(
                            select(func.count())
                            .select_from(Message)
                            .where(Message.status == "queued")
                        )
                        db.session.remove()
                    if not left:
                        return
                # SQLite's busy handler is not fair: a pause between iterations (as between
                # processes) lets the other dispatcher win the write lock now and then.
                time.sleep(random.uniform(0, 0.002))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(d,)) for d in (one, two)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    tags = collections.Counter(m["tag"] for m in carrier.sent)
    assert set(tags) == set(ids)
    assert set(tags.values()) == {1}
    assert handled["one"] > 0 and handled["two"] > 0
    rows = load(app_one)
    # A takeover turned in-flight rows unknown; their recorded acceptance then moved them on.
    assert {m.status for m in rows.values()} == {"accepted"}


# ---------------------------------------------------------------------- inline + CLI


def test_inline_dispatcher_only_in_serving_processes(app, monkeypatch):
    assert start_inline_dispatcher(app) is None  # TESTING
    app.config.update(TESTING=False, DISPATCH="worker")
    assert start_inline_dispatcher(app) is None
    app.config["DISPATCH"] = "inline"
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")
    monkeypatch.setattr("sys.argv", ["flask", "--app", "wsgi", "db", "upgrade"])
    assert start_inline_dispatcher(app) is None
    monkeypatch.setattr("sys.argv", ["flask", "--app", "wsgi", "dispatch"])
    assert start_inline_dispatcher(app) is None
    monkeypatch.delenv("FLASK_RUN_FROM_CLI")
    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    monkeypatch.delenv("SERVER_SOFTWARE", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "gunicorn", raising=False)
    assert start_inline_dispatcher(app) is None  # a plain script
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")
    monkeypatch.setattr("sys.argv", ["flask", "--app", "wsgi", "run", "--port", "5000"])
    assert start_inline_dispatcher(app) is not None


def test_inline_thread_starts_lazily_on_first_request(app, monkeypatch):
    app.config.update(TESTING=False, DISPATCH="inline")
    monkeypatch.delenv("FLASK_RUN_FROM_CLI", raising=False)
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/23.0.0")
    inline = start_inline_dispatcher(app)
    assert inline is not None and inline.thread is None  # nothing before a fork could happen
    client = app.test_client()
    client.get("/healthz")
    thread = inline.thread
    assert thread is not None and thread.is_alive() and thread.daemon
    client.get("/healthz")
    assert inline.thread is thread  # one per process
    inline.stop()
    assert not thread.is_alive()


def test_dispatch_command_once(runner):
    result = runner.invoke(args=["dispatch", "--once"])
    assert result.exit_code == 0, result.output
    assert "handled 0" in result.output


def test_dispatch_command_stops_gracefully_on_sigterm(runner, monkeypatch):
    seen = {}
    real_run_forever = Dispatcher.run_forever

    def run_forever(self, stop_event):
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # as if SIGTERM arrived
        seen["stopped"] = stop_event.is_set()
        real_run_forever(self, stop_event)  # returns at once: the loop sees the stop
        seen["holding"] = self.holding

    monkeypatch.setattr(dispatcher_module.Dispatcher, "run_forever", run_forever)
    previous = signal.getsignal(signal.SIGTERM)
    result = runner.invoke(args=["dispatch"])
    assert result.exit_code == 0, result.output
    assert seen == {"stopped": True, "holding": False}
    assert signal.getsignal(signal.SIGTERM) is previous
