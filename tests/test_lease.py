"""The dispatcher lease, on the database's clock: one holder whatever the hosts' clocks say."""

from __future__ import annotations

import collections
import random
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.dispatcher import Dispatcher
from app.extensions import db
from app.lease import LEASE_POLL, LEASE_TTL, DbLease, db_now
from app.models import Lease, Message, utcnow
from tests.dispatching import (
    Carrier,
    advance_db,
    lease,
    load,
    make_dispatcher,
    queue,
    refused,
)

pytestmark = pytest.mark.both_backends
HOUR = 3600.0


def skewed(seconds: float):
    """A host wall clock ``seconds`` off the real time (a host without NTP)."""
    return lambda: utcnow() + timedelta(seconds=seconds)


def test_takeover_within_ten_seconds_by_design():
    assert LEASE_TTL + LEASE_POLL < 10


def test_only_the_lease_holder_sends(app):
    queue(app, 3)
    first, first_carrier = make_dispatcher(app, holder="first")
    second, second_carrier = make_dispatcher(app, holder="second")
    assert first.run_once() == 3
    assert lease(app).holder == "first"
    queue(app, 2)
    assert second.run_once() == 0
    assert not second.holding and second_carrier.requests == []
    advance_db(app, LEASE_TTL - 0.5)  # the holder renews every iteration...
    assert first.run_once() == 2
    advance_db(app, LEASE_TTL - 0.5)  # ...so at no point has its lease expired
    queue(app, 1)
    assert second.run_once() == 0
    assert second_carrier.requests == [] and len(first_carrier.requests) == 2


def test_standby_takes_over_after_expiry_and_settles_the_dead_holders_claims(app):
    queue(app, 1)
    first, _ = make_dispatcher(app, holder="first")
    second, second_carrier = make_dispatcher(app, holder="second")
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
    advance_db(app, LEASE_TTL - 1.0)
    assert second.run_once() == 0  # not expired yet
    advance_db(app, 1.1)
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


# ---------------------------------------------------------------------- skewed host clocks


def test_the_lease_is_stored_on_the_database_clock(app):
    dispatcher, _ = make_dispatcher(app, holder="ahead", wall_clock=skewed(HOUR))
    before = utcnow()
    dispatcher.run_once()
    after = utcnow()
    row = lease(app)
    # The host thinks it is an hour later; the lease says what the database's clock says.
    assert before + timedelta(seconds=LEASE_TTL - 0.01) <= row.expires_at
    assert row.expires_at <= after + timedelta(seconds=LEASE_TTL + 0.01)
    assert before - timedelta(seconds=0.01) <= row.acquired_at <= after
    assert abs(dispatcher.db_offset + timedelta(seconds=HOUR)) < timedelta(seconds=1)


@pytest.mark.parametrize("holder_skew,standby_skew", [(-HOUR, 0), (0, HOUR), (-HOUR, HOUR)])
def test_a_standby_never_steals_a_live_lease_whatever_the_clocks(app, holder_skew, standby_skew):
    queue(app, 2)
    holder, holder_carrier = make_dispatcher(app, holder="h", wall_clock=skewed(holder_skew))
    standby, standby_carrier = make_dispatcher(app, holder="s", wall_clock=skewed(standby_skew))
    assert holder.run_once() == 2
    for _ in range(5):
        queue(app, 1)
        assert standby.run_once() == 0
        assert not standby.holding and lease(app).holder == "h"
        assert holder.run_once() == 1 and holder.holding
    assert standby_carrier.requests == [] and len(holder_carrier.sent) == 7


@pytest.mark.parametrize("skew", [-HOUR, HOUR])
def test_a_holder_whose_lease_expired_on_the_database_clock_loses_it(app, skew):
    queue(app, 1)
    first, first_carrier = make_dispatcher(app, holder="first", wall_clock=skewed(skew))
    second, second_carrier = make_dispatcher(app, holder="second", wall_clock=skewed(-skew))
    assert first.run_once() == 1
    advance_db(app, LEASE_TTL + 0.5)  # first was paused past its TTL
    queue(app, 1)
    assert second.run_once() == 1 and second.holding
    queue(app, 1)
    assert first.run_once() == 0  # its host clock says nothing about the lease
    assert not first.holding and len(first_carrier.requests) == 1
    assert second.run_once() == 1 and len(second_carrier.sent) == 2


def test_two_skewed_dispatchers_have_exactly_one_holder(make_app):
    apps = [make_app(), make_app()]
    ids = queue(apps[0], 40)
    carrier = Carrier(delay=0.002)
    dispatchers = [
        make_dispatcher(app, carrier, holder=name, wall_clock=skewed(skew), max_batch=2)[0]
        for app, name, skew in zip(apps, ("ahead", "behind"), (HOUR, -HOUR), strict=True)
    ]
    holders = collections.Counter()
    stop = time.monotonic() + 20
    while len(carrier.sent) < len(ids) and time.monotonic() < stop:
        for dispatcher in random.sample(dispatchers, 2):
            dispatcher.run_once()
            assert sum(d.holding for d in dispatchers) <= 1
            holders[lease(apps[0]).holder] += 1
    assert len(holders) == 1, holders  # the lease never changed hands: nobody expired
    assert sorted(m["tag"] for m in carrier.sent) == sorted(ids)
    assert {m.status for m in load(apps[0]).values()} == {"accepted"}


@pytest.mark.parametrize("holder_skew", [HOUR, -HOUR])
def test_standby_takes_over_within_ttl_plus_poll_after_the_holder_dies(app, holder_skew):
    ttl = 1.5
    holder, _ = make_dispatcher(app, holder="h", wall_clock=skewed(holder_skew), lease_ttl=ttl)
    standby, _ = make_dispatcher(app, holder="s", wall_clock=skewed(-holder_skew), lease_ttl=ttl)
    holder.run_once()
    died = time.monotonic()  # it renews no more (SIGKILL: it never releases)
    stop = threading.Event()
    thread = threading.Thread(target=standby.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        while not standby.holding and time.monotonic() - died < ttl + LEASE_POLL + 5:
            time.sleep(0.01)
        took = time.monotonic() - died
    finally:
        stop.set()
        thread.join(10)
    assert standby.holding or lease(app).holder == "s"
    assert ttl - 0.3 <= took <= ttl + LEASE_POLL + 0.5, took


@pytest.mark.parametrize("skew", [-HOUR, 0, HOUR])
def test_a_clean_stop_hands_over_at_once_whatever_the_clock(app, skew):
    first, _ = make_dispatcher(app, holder="first", wall_clock=skewed(skew))
    second, _ = make_dispatcher(app, holder="second")
    first.run_once()
    first.release()
    queue(app, 1)
    assert second.run_once() == 1 and lease(app).holder == "second"


def test_db_now_is_the_servers_clock_in_the_stored_form(app):
    with app.app_context():
        dialect = db.engine.dialect.name
        now, later = db.session.execute(select(db_now(dialect), db_now(dialect, 2.5))).one()
        assert abs(now - utcnow()) < timedelta(seconds=1)
        assert later - now == pytest.approx(timedelta(seconds=2.5), abs=timedelta(seconds=0.01))
        # Comparable with what the column type stores, in SQL.
        db.session.add(Lease(name="probe", holder="x", expires_at=utcnow() + timedelta(hours=1)))
        db.session.flush()
        live = select(func.count()).where(Lease.expires_at >= db_now(dialect))
        assert db.session.scalar(live) == 1
        db.session.execute(update(Lease).values(expires_at=db_now(dialect, -1)))
        assert db.session.scalar(live) == 0
        db.session.rollback()


def test_lease_hold_answers(app):
    with app.app_context():
        dialect = db.engine.dialect.name
        one, two = DbLease("one", dialect), DbLease("two", dialect)
        assert one.hold(db.session) == "acquired"
        assert one.hold(db.session) == "renewed"
        assert two.hold(db.session) is None
        one.release(db.session)
        assert two.hold(db.session) == "acquired"
        db.session.rollback()


@pytest.mark.parametrize("skew", [-HOUR, HOUR])
def test_what_a_skewed_dispatcher_writes_is_on_the_database_clock(app, skew):
    accepted, retried = queue(app, 1), queue(app, 1, **{"from": "+15555550199"})
    dispatcher, carrier = make_dispatcher(app, wall_clock=skewed(skew), max_batch=1)
    before = utcnow()
    assert dispatcher.run_once() == 1
    carrier.script = refused
    assert dispatcher.run_once() == 1
    after = utcnow()
    rows = load(app)
    slack = timedelta(seconds=0.05)
    assert before - slack <= rows[accepted[0]].accepted_at <= after + slack
    assert before - slack <= rows[retried[0]].updated_at <= after + slack
    # The retry is due after the backoff on the database's clock, not an hour off.
    due = rows[retried[0]].next_attempt_at
    assert before + timedelta(seconds=0.5) - slack <= due <= after + timedelta(seconds=1) + slack
