"""Retention: what ``prune`` deletes and keeps, the stats it must not change, the daily run."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select

from app import messaging, retention, rollups
from app.config import load_settings
from app.extensions import db
from app.models import CallbackEvent, IdempotencyKey, Message, Rollup, RollupState, utcnow
from app.queries import stats
from app.retention import Pruner, parse_age
from tests.conftest import basic
from tests.dispatching import Clock, make_dispatcher

pytestmark = pytest.mark.both_backends

HOURS = 30  # of history seeded; prune keeps the last 12
KEEP = timedelta(hours=12)
# Each slot is one 5-minute bucket: three final messages and one still waiting for a receipt.
SLOT = [("delivered", 2.0), ("not-delivered", 40.0), ("error", None), ("sent", None)]


def event(message: Message | None, at, **fields) -> CallbackEvent:
    values = dict(
        received_at=at,
        via="primary",
        method="POST",
        raw="{}",
        message_id=message.id if message else None,
        applied=message is not None,
        duplicate=False,
        late=False,
        parked=message is None,
        unparseable=False,
        code_mismatch=False,
    )
    values.update(fields)
    return CallbackEvent(**values)


def seed(app, hours: int = HOURS) -> dict:
    """Two slots an hour over the last ``hours``, each message with its events (a duplicate via
    the fallback now and then), and parked events that never matched."""
    now = utcnow()
    ids: dict[str, list[str]] = {"final": [], "waiting": []}
    with app.app_context():
        for slot in range(hours * 2):
            start = rollups.floor(now - timedelta(minutes=30 * slot + 7)) + timedelta(seconds=20)
            for i, (status, receipt) in enumerate(SLOT):
                created = start + timedelta(seconds=10 * i)
                [message] = messaging.enqueue(
                    db.session,
                    [{"from": "+15555550100", "to": f"+1555555{slot:04d}", "text": "x"}],
                    now=created,
                )
                message.status = status
                message.carrier_message_id = f"m-{slot:04d}{i}" + "a" * 18
                if receipt is not None:
                    message.accepted_at = created
                    message.receipt_seconds = receipt
                db.session.flush()
                db.session.add(event(message, created + timedelta(seconds=1)))
                if slot % 3 == 0:
                    db.session.add(
                        event(
                            message, created + timedelta(seconds=2), via="fallback", duplicate=True
                        )
                    )
                ids["final" if status != "sent" else "waiting"].append(message.id)
            db.session.add(event(None, start + timedelta(seconds=50), carrier_message_id="m-x"))
        db.session.commit()
    return {"now": now, **ids}


def refresh_all(app) -> None:
    with app.app_context():
        while True:
            covered = rollups.refresh(db.session)
            db.session.commit()
            if covered == 0:
                return


def prune(app, older_than=KEEP, **kwargs) -> Pruner:
    with app.app_context():
        pruner = Pruner(db.engine, older_than, **kwargs)
        while not pruner.done:
            pruner.step()
    return pruner


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def windows(app, now) -> dict:
    """The stats over windows the rollups cover (whole buckets), old and recent."""
    aligned = [rollups.floor(now - timedelta(hours=h)) for h in (28, 20, 13, 6)]
    with app.app_context():
        return {since: stats(db.session, since) for since in [None, *aligned]}


def test_ages():
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age(" 90m ") == timedelta(minutes=90)
    for bad in ("", "30", "0d", "-1d", "1w", "1.5d", "d"):
        with pytest.raises(ValueError):
            parse_age(bad)


@pytest.mark.parametrize(
    "raw,value,error",
    [("", None, None), ("30", 30, None), ("0", None, "RETENTION_DAYS"), ("x", None, "integer")],
)
def test_retention_days_setting(raw, value, error):
    settings = load_settings({"RELAY_ENV": "testing", "RETENTION_DAYS": raw})
    if error:
        assert any(error in e for e in settings.errors), settings.errors
    else:
        assert settings.values["RETENTION_DAYS"] == value and not settings.errors


def test_prune_deletes_old_final_messages_and_keeps_everything_else(app):
    seeded = seed(app)
    refresh_all(app)
    cutoff = seeded["now"] - KEEP
    old_final = count(app, Message, Message.id.in_(seeded["final"]), Message.updated_at < cutoff)
    young = count(app, Message, Message.updated_at >= cutoff)
    total = count(app, Message)
    waiting = len(seeded["waiting"])
    assert old_final > 0 and young > 0
    with app.app_context():  # an old final message with a recent event stays, whole
        recent = db.session.get(Message, seeded["final"][-1])
        assert recent.updated_at < cutoff
        db.session.add(event(recent, utcnow(), duplicate=True))
        db.session.commit()
        recent_id = recent.id
    pruner = prune(app, batch_size=7)

    assert pruner.deleted["messages"] == old_final - 1
    assert count(app, Message) == total - (old_final - 1)
    assert count(app, Message, Message.id.in_(seeded["waiting"])) == waiting  # never final
    assert count(app, Message, Message.updated_at >= cutoff) == young
    assert count(app, Message, Message.id == recent_id) == 1
    # Every remaining event belongs to a remaining message, or is a young unmatched one.
    assert count(app, CallbackEvent, CallbackEvent.message_id.is_(None)) == count(
        app, CallbackEvent, CallbackEvent.message_id.is_(None), CallbackEvent.received_at >= cutoff
    )
    kept_messages = select(Message.id)
    assert count(app, CallbackEvent, CallbackEvent.message_id.not_in(kept_messages)) == 0
    # Small batches: many short transactions, none above its size.
    assert pruner.batches >= pruner.deleted["messages"] // 7


def test_stats_and_chart_are_the_same_after_a_prune(app, client, cb_auth):
    seeded = seed(app)
    refresh_all(app)
    before = windows(app, seeded["now"])
    dash = basic("dash", "dash-pass")

    def legend():
        app.extensions.pop("dashboard.cache", None)
        body = client.get("/dashboard/?window=7d", headers=dash).get_data(as_text=True)
        return dict(re.findall(r'class="key l-([\w-]+)">[^<]+<b>(\d+)</b>', body))

    chart = legend()
    assert prune(app).deleted["messages"] > 0
    assert windows(app, seeded["now"]) == before
    refresh_all(app)
    assert windows(app, seeded["now"]) == before
    assert legend() == chart

    # A receipt for a kept message in a pruned bucket: that bucket is recomputed from what is
    # left plus what was pruned, so it moves by exactly this one message.
    with app.app_context():
        old = db.session.scalar(
            select(Message)
            .where(Message.id.in_(seeded["waiting"]))
            .order_by(Message.created_at)
            .limit(1)
        )
        old_id, carrier_id = old.id, old.carrier_message_id
    response = client.post(
        "/callbacks/catapult",
        headers=cb_auth,
        json={
            "messageId": carrier_id,
            "tag": old_id,
            "state": "sent",
            "deliveryState": "delivered",
        },
    )
    assert response.status_code == 200
    refresh_all(app)
    after = windows(app, seeded["now"])[None]
    assert after["counts"]["delivered"] == before[None]["counts"]["delivered"] + 1
    assert after["counts"]["sent"] == before[None]["counts"]["sent"] - 1
    assert after["events"]["total"] == before[None]["events"]["total"] + 1
    assert after["events"]["unmatched"] == before[None]["events"]["unmatched"]


def test_rollups_rebuilt_from_scratch_still_count_pruned_rows(app):
    seeded = seed(app)
    refresh_all(app)
    before = windows(app, seeded["now"])
    prune(app)
    with app.app_context():
        db.session.execute(delete(Rollup).where(Rollup.kind.not_in(rollups.PRUNED_KINDS)))
        db.session.execute(delete(RollupState))
        db.session.commit()
    refresh_all(app)
    assert windows(app, seeded["now"]) == before


def test_only_rows_the_rollups_counted_can_go(app):
    seed(app, hours=20)
    assert prune(app).deleted["messages"] == 0  # no rollups yet: nothing is known to be counted
    with app.app_context():
        rollups.refresh(db.session)  # one pass: the oldest four hours
        db.session.commit()
        covered = rollups.covered_until(db.session)
    pruner = prune(app)
    assert pruner.deleted["messages"] > 0
    assert count(app, Message, Message.created_at < covered, Message.status != "sent") == 0
    assert count(app, Message, Message.created_at >= covered, Message.status != "sent") > 0


def test_dry_run_deletes_nothing_and_counts_what_would_go(app):
    seed(app)
    refresh_all(app)
    total = count(app, Message), count(app, CallbackEvent)
    dry = prune(app, dry_run=True)
    assert (count(app, Message), count(app, CallbackEvent)) == total
    real = prune(app)
    assert dry.deleted == real.deleted and real.deleted["events"] > 0


def test_prune_command(app, runner):
    seed(app)
    expected = 3 * 2 * (HOURS - 12)  # the final messages of the slots older than 12 h
    result = runner.invoke(args=["prune", "--older-than", "12h", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"would delete {expected} messages" in result.output
    assert count(app, Message) == 4 * 2 * HOURS
    result = runner.invoke(args=["prune", "--older-than", "720m", "--batch-size", "50"])
    assert result.exit_code == 0, result.output
    assert f"deleted {expected} messages" in result.output
    assert count(app, Message) == 4 * 2 * HOURS - expected
    bad = runner.invoke(args=["prune", "--older-than", "12"])
    assert bad.exit_code == 2 and "30d, 12h or 90m" in bad.output


def test_callbacks_go_on_while_a_prune_runs(app, client, cb_auth):
    seeded = seed(app)
    refresh_all(app)
    with app.app_context():
        targets = [
            (m.id, m.carrier_message_id)
            for m in db.session.scalars(select(Message).where(Message.id.in_(seeded["waiting"])))
        ]
    done = threading.Event()
    errors: list[BaseException] = []

    def run():
        try:
            prune(app, batch_size=5)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    answered = 0
    for relay_id, carrier_id in targets * 2:  # twice: the second is a duplicate
        body = {"messageId": carrier_id, "tag": relay_id, "state": "sent"}
        answered += (
            client.post("/callbacks/catapult", headers=cb_auth, json=body).status_code == 200
        )
    thread.join(60)
    assert done.is_set() and not errors
    assert answered == 2 * len(targets)
    assert count(app, CallbackEvent, CallbackEvent.received_at >= seeded["now"]) == answered


def test_the_lease_holder_prunes_once_a_day(make_app, monkeypatch):
    runs: list[Pruner] = []

    class Counted(Pruner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runs.append(self)

    monkeypatch.setattr(retention, "Pruner", Counted)
    app = make_app(RETENTION_DAYS=1, RECONCILE_AFTER_S=10**7)
    seed(app, hours=40)
    clock = Clock()
    holder, _ = make_dispatcher(app, clock=clock, holder="holder")
    standby, _ = make_dispatcher(app, clock=clock, holder="standby")
    old = (Message.updated_at < utcnow() - timedelta(days=1), Message.status != "sent")
    assert count(app, Message, *old) > 0
    for _ in range(2000):  # one batch per iteration, once the rollups have caught up
        holder.run_once()
        standby.run_once()
        clock.advance(5)
        if runs and runs[0].done:
            break
    assert len(runs) == 1 and runs[0].done and runs[0].deleted["messages"] > 0
    assert count(app, Message, *old) == 0
    assert not standby.holding  # a standby never prunes
    for _ in range(10):
        holder.run_once()
        clock.advance(60)
    assert len(runs) == 1  # not before a day has passed
    clock.advance(86400)
    holder.run_once()
    assert len(runs) == 2


def test_prune_takes_finished_deliveries_and_keeps_messages_still_being_told(app):
    from app.webhooks.models import WebhookDelivery, WebhookEndpoint

    seeded = seed(app)
    refresh_all(app)
    cutoff = seeded["now"] - KEEP
    old = cutoff - timedelta(hours=1)
    with app.app_context():
        final = db.session.scalars(
            select(Message).where(Message.id.in_(seeded["final"]), Message.updated_at < old)
        ).all()
        told, telling = final[0].id, final[1].id
        waiting = seeded["waiting"][-1]  # never final: stays, its old finished delivery goes
        db.session.add(
            WebhookEndpoint(
                id="wh-test",
                url="https://x.example/",
                events=["*"],
                secret="whsec_AAAA",
                enabled=True,
            )
        )
        db.session.flush()  # (no relationship tells the unit of work to insert it first)
        for n, (message_id, status, finished) in enumerate(
            [
                (told, "succeeded", old),
                (telling, "pending", None),
                (waiting, "failed", old),
                (waiting, "succeeded", utcnow()),
            ]
        ):
            db.session.add(
                WebhookDelivery(
                    uid=f"msg_{n}",
                    endpoint_id="wh-test",
                    message_id=message_id,
                    type="message.sent",
                    occurred_at=old,
                    body="{}",
                    status=status,
                    attempts=1,
                    step=1,
                    next_attempt_at=old if status == "pending" else None,
                    finished_at=finished,
                )
            )
        db.session.commit()
    pruner = prune(app)
    assert count(app, Message, Message.id == told) == 0
    assert count(app, Message, Message.id == telling) == 1  # a delivery still pending
    assert count(app, Message, Message.id == waiting) == 1
    left = {(d, s) for d, s in _deliveries(app)}
    assert left == {(telling, "pending"), (waiting, "succeeded")}
    assert pruner.deleted["deliveries"] == 2
    assert "2 webhook deliveries" in pruner.summary()


def _deliveries(app):
    from app.webhooks.models import WebhookDelivery

    with app.app_context():
        return db.session.execute(select(WebhookDelivery.message_id, WebhookDelivery.status)).all()


def test_prune_forgets_idempotency_keys_first_answered_before_the_cutoff(app):
    now = utcnow()
    ages = {"old-1": 30, "old-2": 13, "young": 11, "new": 0}  # hours since the first answer
    with app.app_context():
        for key, hours in ages.items():
            db.session.add(
                IdempotencyKey(
                    key=key,
                    request_hash="0" * 64,
                    status_code=202,
                    body={},
                    location=None,
                    created_at=now - timedelta(hours=hours),
                )
            )
        db.session.commit()
    dry = prune(app, dry_run=True)
    assert dry.deleted["keys"] == 2 and count(app, IdempotencyKey) == 4
    pruner = prune(app, batch_size=1)  # one key per window: the walk goes on past each
    assert pruner.deleted["keys"] == 2
    assert "2 idempotency keys" in pruner.summary()
    with app.app_context():
        assert set(db.session.scalars(select(IdempotencyKey.key))) == {"young", "new"}
