"""Stats rollups: the same answers as counting live, kept current as old messages change."""

from __future__ import annotations

import random
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import messaging, rollups
from app.extensions import db
from app.models import CallbackEvent, Message, Rollup, utcnow
from app.queries import stats
from tests.conftest import basic

pytestmark = pytest.mark.both_backends

STATUSES = ["delivered"] * 6 + ["not-delivered", "error", "sent", "accepted", "rejected"]


def seed(app, hours=6, per_hour=40, seed_value=3):
    """Messages created over the last ``hours`` with receipts, and callbacks for them."""
    rng = random.Random(seed_value)
    now = utcnow()
    with app.app_context():
        for i in range(hours * per_hour):
            created = now - timedelta(hours=hours) + timedelta(seconds=i * 3600 / per_hour)
            [message] = messaging.enqueue(
                db.session,
                [{"from": "+15555550100", "to": "+15555550101", "text": "x"}],
                now=created,
            )
            message.status = rng.choice(STATUSES)
            if message.status in ("delivered", "not-delivered", "error"):
                message.accepted_at = created
                message.receipt_seconds = rng.uniform(0.05, 30)
            db.session.add(
                CallbackEvent(
                    received_at=created + timedelta(seconds=1),
                    via=rng.choice(["primary", "fallback"]),
                    method="POST",
                    raw="{}",
                    message_id=message.id,
                    applied=True,
                    duplicate=rng.random() < 0.2,
                    late=rng.random() < 0.1,
                    parked=False,
                    unparseable=False,
                    code_mismatch=False,
                )
            )
        db.session.commit()
    return now


def refresh_all(app, now=None):
    with app.app_context():
        while True:
            with Session(db.engine) as session:
                covered = rollups.refresh(session, now=now)
                session.commit()
            if covered == 0:
                return


def current(app, since):
    with app.app_context():
        return stats(db.session, since)


def same(live, rolled):
    assert rolled["counts"] == live["counts"]
    assert rolled["total"] == live["total"]
    assert rolled["deliveryRate"] == live["deliveryRate"]
    assert rolled["events"] == live["events"]
    assert rolled["timeToReceipt"]["count"] == live["timeToReceipt"]["count"]
    for p in ("p50", "p95"):
        assert rolled["timeToReceipt"][p] == pytest.approx(live["timeToReceipt"][p], rel=0.06)


@pytest.mark.parametrize("since_hours", [None, 4, 2.37, 0.1])
def test_rollups_give_the_live_answer(app, since_hours):
    now = seed(app)
    since = None if since_hours is None else now - timedelta(hours=since_hours)
    live = current(app, since)
    assert live["total"] > 0 or since_hours == 0.1
    refresh_all(app, now=now)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Rollup)) > 0
        covered = rollups.covered_until(db.session)
    assert covered == rollups.floor(now)
    same(live, current(app, since))


@pytest.mark.parametrize("since_days", [None, 2.5, 1])
def test_whole_days_are_read_from_day_sums(app, since_days):
    now = seed(app, hours=80, per_hour=3)
    since = None if since_days is None else now - timedelta(days=since_days)
    live = current(app, since)
    refresh_all(app, now=now)
    with app.app_context():
        days = db.session.scalar(
            select(func.count(func.distinct(Rollup.bucket))).where(Rollup.kind == "day-status")
        )
    assert days >= 2
    same(live, current(app, since))


def test_a_change_to_an_old_message_reaches_the_rollups(app, client, cb_auth):
    now = seed(app)
    refresh_all(app, now=now)
    with app.app_context():
        old = db.session.scalar(
            select(Message).where(Message.status == "sent").order_by(Message.id).limit(1)
        )
        old.carrier_message_id = "m-old"
        db.session.commit()
        old_id = old.id
    before = current(app, None)["counts"]
    response = client.post(
        "/callbacks/catapult",
        headers=cb_auth,
        json={
            "messageId": "m-old",
            "tag": old_id,
            "state": "sent",
            "deliveryState": "delivered",
            "deliveryCode": 0,
        },
    )
    assert response.status_code == 200
    refresh_all(app)
    after = current(app, None)["counts"]
    assert after["delivered"] == before["delivered"] + 1
    assert after["sent"] == before["sent"] - 1
    refreshed = current(app, None)
    with app.app_context():
        live = rollups.counts(db.session, None, None)
    assert refreshed["events"]["total"] == live[2]["total"]


def test_the_rollups_command_catches_up(app, runner):
    seed(app, hours=30, per_hour=2)
    result = runner.invoke(args=["rollups"])
    assert result.exit_code == 0, result.output
    assert "rollups up to date" in result.output
    with app.app_context():
        assert rollups.covered_until(db.session) > utcnow() - 2 * rollups.BUCKET


def test_percentile_of_classes_is_within_five_percent():
    values = [0.01 * 1.07**i for i in range(200)]
    classes = rollups.Counter(rollups.receipt_class(v) for v in values)
    for fraction in (0.5, 0.95):
        exact = sorted(values)[max(1, int(-(-fraction * len(values) // 1))) - 1]
        assert rollups.percentile(classes, fraction) == pytest.approx(exact, rel=0.05)


def test_the_dispatcher_loop_keeps_the_rollups(app):
    from app.dispatcher import Dispatcher

    seed(app, hours=1, per_hour=10)
    dispatcher = Dispatcher(app)
    dispatcher.run_once()
    dispatcher.release()
    with app.app_context():
        assert rollups.covered_until(db.session) >= rollups.floor(utcnow()) - rollups.BUCKET


def test_the_overview_chart_reads_the_same_from_rollups(app, client):
    now = seed(app, hours=20, per_hour=12)
    dash = basic("dash", "dash-pass")

    def legend():
        app.extensions.pop("dashboard.cache", None)
        body = client.get("/dashboard/?window=24h", headers=dash).get_data(as_text=True)
        return dict(re.findall(r'class="key l-([\w-]+)">[^<]+<b>(\d+)</b>', body))

    live = legend()
    assert int(live["sent"]) > 0 and int(live["delivered"]) > 0
    refresh_all(app, now=now)
    assert legend() == live
