"""Reconcile: on demand (API) and the reconciler that asks about stale messages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app import messaging
from app.catapult import CatapultError
from app.extensions import db
from app.models import CallbackEvent, Message, utcnow
from app.reconcile import reconcile_stale

pytestmark = pytest.mark.both_backends

SMS = {"from": "+15555550100", "to": "+15555550101", "text": "hi"}


class FakeCarrier:
    """Answers GET message / list messages from a dict of carrier resources."""

    def __init__(self, resources=None, fail=False):
        self.resources = resources or {}
        self.fail = fail
        self.asked = []
        self.listed = []

    def get_message(self, carrier_id):
        self.asked.append(carrier_id)
        if self.fail:
            raise CatapultError(
                "carrier down", status=503, category="unavailable", code="internal-error"
            )
        return self.resources[carrier_id]

    def list_messages(self, max_pages=1, **filters):
        self.listed.append(filters)
        return iter(list(self.resources.values()))


def resource(carrier_id, tag, **fields):
    return {
        "id": carrier_id,
        "messageId": carrier_id,
        "direction": "out",
        "tag": tag,
        "from": SMS["from"],
        "to": SMS["to"],
        "state": "sent",
        **fields,
    }


def make(app, status, carrier_id=None, age_s=3600, **kw):
    with app.app_context():
        then = utcnow() - timedelta(seconds=age_s)
        message = messaging.enqueue(db.session, [{**SMS, **kw}], now=then)[0]
        message.status = status
        message.carrier_message_id = carrier_id
        message.accepted_at = then if carrier_id else None
        db.session.commit()
        return message.id


def load(app, message_id):
    with app.app_context():
        message = db.session.get(Message, message_id)
        events = db.session.scalars(
            select(CallbackEvent).where(CallbackEvent.message_id == message_id)
        ).all()
        db.session.expunge_all()
        return message, events


def test_api_reconcile_records_the_carrier_answer(app, client, auth):
    message_id = make(app, "sent", "m-rec")
    fake = FakeCarrier(
        {
            "m-rec": resource(
                "m-rec",
                message_id,
                deliveryState="delivered",
                deliveryCode=0,
                deliveryDescription="ok",
            )
        }
    )
    app.extensions["catapult_client"] = fake
    body = client.post(f"/api/messages/{message_id}/reconcile", headers=auth).get_json()
    assert fake.asked == ["m-rec"]
    assert body["status"] == "delivered"
    assert [(e["via"], e["method"], e["applied"]) for e in body["events"]] == [
        ("reconcile", "GET", True)
    ]
    assert load(app, message_id)[0].reconciled_at is not None


def test_api_reconcile_reports_a_carrier_failure_as_502(app, client, auth):
    message_id = make(app, "sent", "m-down")
    app.extensions["catapult_client"] = FakeCarrier(fail=True)
    response = client.post(f"/api/messages/{message_id}/reconcile", headers=auth)
    assert response.status_code == 502
    assert response.get_json()["code"] == "carrier-error"
    assert load(app, message_id)[0].status == "sent"


def test_reconciler_settles_stale_messages(app):
    accepted = make(app, "accepted", "m-a")
    sent = make(app, "sent", "m-s")
    fresh = make(app, "sent", "m-f", age_s=5)
    no_receipts = make(app, "sent", "m-n", receiptRequested="none")
    done = make(app, "delivered", "m-d")
    unknown = make(app, "unknown")
    fake = FakeCarrier(
        {
            "m-a": resource("m-a", accepted, deliveryState="not-delivered", deliveryCode=720),
            "m-s": resource("m-s", sent, deliveryState="delivered", deliveryCode=0),
            "m-u": resource("m-u", unknown, deliveryState="delivered", deliveryCode=0),
            "m-other": resource("m-other", "rm-someone-else"),
        }
    )
    with app.app_context():
        recorded = reconcile_stale(db.engine, fake, after_s=60)
    assert recorded == 3
    assert sorted(fake.asked) == ["m-a", "m-s"]  # fresh, final and no-receipt ones not asked
    assert load(app, accepted)[0].status == "not-delivered"
    assert load(app, sent)[0].status == "delivered"
    message, events = load(app, unknown)
    assert (message.status, message.carrier_message_id) == ("delivered", "m-u")
    assert [e.via for e in events] == ["reconcile"]
    assert fake.listed[0]["from"] == SMS["from"] and fake.listed[0]["to"] == SMS["to"]
    for untouched in (fresh, no_receipts, done):
        assert load(app, untouched)[1] == []
    # Asked once per window: a second pass right away asks nobody.
    fake.asked.clear()
    with app.app_context():
        assert reconcile_stale(db.engine, fake, after_s=60) == 0
    assert fake.asked == []


def test_reconciler_survives_carrier_errors(app):
    message_id = make(app, "accepted", "m-x")
    with app.app_context():
        assert reconcile_stale(db.engine, FakeCarrier(fail=True), after_s=60) == 0
    message, events = load(app, message_id)
    assert message.status == "accepted" and events == []
    assert message.reconciled_at is not None  # not retried in a tight loop


@pytest.mark.parametrize("status", ["accepted", "sent"])
def test_reconcile_answer_never_moves_backwards(app, status):
    message_id = make(app, status, "m-b")
    with app.app_context():
        message = db.session.get(Message, message_id)
        message.status = "delivered"
        message.updated_at = utcnow() - timedelta(hours=1)
        db.session.commit()
        message = db.session.get(Message, message_id)
        messaging.record_reconcile(db.session, message, resource("m-b", message_id))
        db.session.commit()
    message, events = load(app, message_id)
    assert message.status == "delivered"
    assert events[0].late


def test_reconcile_answer_is_stored_without_the_callback_credentials(app, client, auth):
    """The carrier's GET message shows the callbackUrl it was given, credentials and all: the
    stored event (and so the API, which shows it) keeps the URLs but not the credentials."""
    message_id = make(app, "sent", "m-cred")
    url = "https://cb-user:s3cret-pass@relay.example/callbacks/catapult"
    fake = FakeCarrier(
        {"m-cred": resource("m-cred", message_id, callbackUrl=url, fallbackUrl=url + "/fallback")}
    )
    app.extensions["catapult_client"] = fake
    body = client.post(f"/api/messages/{message_id}/reconcile", headers=auth).get_data(True)
    assert "s3cret-pass" not in body and "cb-user" not in body
    [event] = load(app, message_id)[1]
    assert "s3cret-pass" not in event.raw and "cb-user" not in event.raw
    assert event.payload["callbackUrl"] == "https://***:***@relay.example/callbacks/catapult"
    events = client.get("/api/events?via=reconcile", headers=auth).get_data(as_text=True)
    assert "s3cret-pass" not in events
