"""The callback receiver: auth, storage of every event, correlation, the state machine."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from app import messaging
from app.extensions import db
from app.models import CallbackEvent, Message, utcnow
from tests.conftest import CALLBACK_PASSWORD, CALLBACK_USER, basic

pytestmark = pytest.mark.both_backends

PATHS = {"primary": "/callbacks/catapult", "fallback": "/callbacks/catapult/fallback"}


def make_message(app, status="accepted", carrier_id="m-aaaaaaaaaaaaaaaaaaaaaaa", **kw):
    with app.app_context():
        message = messaging.enqueue(
            db.session, [{"from": "+15555550100", "to": "+15555550101", "text": "hi", **kw}]
        )[0]
        message.status = status
        message.carrier_message_id = carrier_id
        if carrier_id:
            message.accepted_at = utcnow()
        db.session.commit()
        return message.id


def event(carrier_id="m-aaaaaaaaaaaaaaaaaaaaaaa", tag=None, **fields):
    body = {
        "eventType": "sms",
        "direction": "out",
        "messageId": carrier_id,
        "from": "+15555550100",
        "to": "+15555550101",
        "state": "sent",
        "segmentCount": 1,
        "time": "2026-11-28T10:00:00.000Z",
    }
    if tag is not None:
        body["tag"] = tag
    body.update(fields)
    return body


def deliver(client, cb_auth, body, method="POST", via="primary"):
    if method == "GET":
        response = client.get(PATHS[via] + "?" + urlencode(body), headers=cb_auth)
    else:
        response = client.post(PATHS[via], json=body, headers=cb_auth)
    return response


def load(app, message_id):
    with app.app_context():
        message = db.session.get(Message, message_id)
        events = db.session.scalars(
            select(CallbackEvent)
            .where(CallbackEvent.message_id == message_id)
            .order_by(CallbackEvent.id)
        ).all()
        db.session.expunge_all()
        return message, events


def all_events(app):
    with app.app_context():
        rows = db.session.scalars(select(CallbackEvent).order_by(CallbackEvent.id)).all()
        db.session.expunge_all()
        return rows


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("via", ["primary", "fallback"])
def test_event_is_stored_and_applied_on_every_route(app, client, cb_auth, method, via):
    message_id = make_message(app)
    body = event(
        tag=message_id,
        deliveryState="delivered",
        deliveryCode=0,
        deliveryDescription="Delivered to carrier",
    )
    response = deliver(client, cb_auth, body, method, via)
    assert response.status_code == 200
    assert response.data == b""
    message, events = load(app, message_id)
    assert message.status == "delivered"
    assert message.delivery_code == 0
    assert message.delivery_description == "Delivered to carrier"
    assert len(events) == 1
    assert (events[0].via, events[0].method) == (via, method)
    assert events[0].applied and events[0].status_after == "delivered"
    assert events[0].payload["messageId"] == "m-aaaaaaaaaaaaaaaaaaaaaaa"
    if method == "GET":
        assert "messageId=m-aaaaaaaaaaaaaaaaaaaaaaa" in events[0].raw


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(CALLBACK_USER, "wrong"),
        basic("someone", CALLBACK_PASSWORD),
        {"Authorization": f"Bearer {CALLBACK_PASSWORD}"},
        {"Authorization": "Basic not-base64!"},
    ],
    ids=["none", "wrong-password", "wrong-user", "bearer", "garbage"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unauthenticated_callbacks_get_401_and_store_nothing(app, client, headers, method):
    message_id = make_message(app)
    body = event(tag=message_id)
    if method == "GET":
        response = client.get(PATHS["primary"] + "?" + urlencode(body), headers=headers)
    else:
        response = client.post(PATHS["fallback"], json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.get_json()["category"] == "authentication"
    assert all_events(app) == []
    assert load(app, message_id)[0].status == "accepted"


def test_duplicate_is_stored_but_not_reapplied(app, client, cb_auth):
    message_id = make_message(app)
    receipt = event(tag=message_id, deliveryState="delivered", deliveryCode=0)
    assert deliver(client, cb_auth, receipt).status_code == 200
    # The carrier reached both URLs: the same event arrives again on the fallback.
    assert deliver(client, cb_auth, receipt, via="fallback").status_code == 200
    message, events = load(app, message_id)
    assert message.status == "delivered"
    assert [e.duplicate for e in events] == [False, True]
    assert [e.applied for e in events] == [True, False]


def test_delivery_code_as_string_is_the_same_event(app, client, cb_auth):
    message_id = make_message(app)
    deliver(client, cb_auth, event(tag=message_id, deliveryState="delivered", deliveryCode=0))
    deliver(
        client,
        cb_auth,
        event(tag=message_id, deliveryState="delivered", deliveryCode="0"),
        method="GET",
    )
    message, events = load(app, message_id)
    assert message.delivery_code == 0
    assert [e.duplicate for e in events] == [False, True]


def test_out_of_order_never_moves_backwards(app, client, cb_auth):
    message_id = make_message(app)
    deliver(client, cb_auth, event(tag=message_id, deliveryState="delivered", deliveryCode=0))
    deliver(client, cb_auth, event(tag=message_id, state="sent"))
    message, events = load(app, message_id)
    assert message.status == "delivered"
    assert [e.late for e in events] == [False, True]
    assert not events[1].applied


def test_sent_then_delivered_in_order(app, client, cb_auth):
    message_id = make_message(app)
    deliver(client, cb_auth, event(tag=message_id, state="sent"))
    assert load(app, message_id)[0].status == "sent"
    deliver(
        client,
        cb_auth,
        event(
            tag=message_id,
            deliveryState="not-delivered",
            deliveryCode=720,
            deliveryDescription="Invalid destination",
        ),
    )
    message, events = load(app, message_id)
    assert message.status == "not-delivered"
    assert message.delivery_code == 720
    assert message.receipt_seconds is not None and message.receipt_seconds >= 0
    assert [e.applied for e in events] == [True, True]


def test_first_final_state_wins(app, client, cb_auth):
    message_id = make_message(app)
    deliver(client, cb_auth, event(tag=message_id, state="error", deliveryCode=999))
    deliver(client, cb_auth, event(tag=message_id, deliveryState="delivered", deliveryCode=0))
    message, events = load(app, message_id)
    assert message.status == "error"
    assert events[1].late


def test_code_disagreeing_with_delivery_state_is_kept_and_flagged(app, client, cb_auth):
    message_id = make_message(app)
    deliver(client, cb_auth, event(tag=message_id, deliveryState="delivered", deliveryCode=650))
    message, events = load(app, message_id)
    assert message.status == "delivered"  # deliveryState decides
    assert message.delivery_code == 650
    assert message.code_mismatch and events[0].code_mismatch


def test_tagged_event_before_send_response_is_applied_at_once(app, client, cb_auth):
    """The receipt raced the 201: the tag finds the message, the carrier id comes from it."""
    message_id = make_message(app, status="sending", carrier_id=None)
    deliver(
        client,
        cb_auth,
        event(
            "m-early00000000000000000000", tag=message_id, deliveryState="delivered", deliveryCode=0
        ),
    )
    message, _ = load(app, message_id)
    assert message.status == "delivered"
    assert message.carrier_message_id == "m-early00000000000000000000"
    with app.app_context():
        message = db.session.get(Message, message_id)
        messaging.record_accepted(db.session, message, "m-early00000000000000000000")
        db.session.commit()
    message, _ = load(app, message_id)
    assert message.status == "delivered"  # the late send response moves nothing back


def test_untagged_early_event_is_parked_then_attached(app, client, cb_auth):
    message_id = make_message(app, status="sending", carrier_id=None)
    deliver(client, cb_auth, event("m-parked0000000000000000000", state="sent"))
    deliver(
        client,
        cb_auth,
        event("m-parked0000000000000000000", deliveryState="delivered", deliveryCode=0),
        method="GET",
    )
    parked = all_events(app)
    assert [e.parked for e in parked] == [True, True]
    assert all(e.message_id is None for e in parked)
    assert load(app, message_id)[0].status == "sending"
    with app.app_context():
        message = db.session.get(Message, message_id)
        messaging.record_accepted(db.session, message, "m-parked0000000000000000000")
        db.session.commit()
    message, events = load(app, message_id)
    assert message.status == "delivered"
    assert [e.applied for e in events] == [True, True]
    assert all(e.parked and e.attached_at is not None for e in events)


def test_unknown_ids_are_kept_unmatched(app, client, cb_auth, auth):
    deliver(client, cb_auth, event("m-nobody00000000000000000000", tag="not-ours"))
    [stored] = all_events(app)
    assert stored.message_id is None and stored.parked
    listed = client.get("/api/events?matched=false", headers=auth).get_json()["items"]
    assert [e["carrierMessageId"] for e in listed] == ["m-nobody00000000000000000000"]


@pytest.mark.parametrize(
    "raw,content_type",
    [
        (b"{not json", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"", "application/json"),
        (b"state=sent", "application/x-www-form-urlencoded"),
        (json.dumps({"state": "sent"}).encode(), "application/json"),  # no id, no tag
        (b"\xff\xfe garbage", "text/plain"),
    ],
    ids=["broken-json", "array", "empty", "form", "no-ids", "binary"],
)
def test_unparseable_authenticated_bodies_are_stored_and_answered_200(
    app, client, cb_auth, raw, content_type
):
    response = client.post(
        PATHS["primary"], data=raw, headers={**cb_auth, "Content-Type": content_type}
    )
    assert response.status_code == 200
    [stored] = all_events(app)
    assert stored.unparseable and stored.message_id is None
    assert stored.raw == raw.decode("utf-8", "replace")


def test_get_without_parameters_is_stored_as_unparseable(app, client, cb_auth):
    assert client.get(PATHS["fallback"], headers=cb_auth).status_code == 200
    [stored] = all_events(app)
    assert stored.unparseable and stored.via == "fallback" and stored.method == "GET"


def test_unknown_state_is_stored_and_flagged(app, client, cb_auth):
    message_id = make_message(app)
    deliver(client, cb_auth, event(tag=message_id, state="teleported"))
    message, events = load(app, message_id)
    assert message.status == "accepted"
    assert events[0].unparseable and not events[0].applied


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_inbound_message_becomes_a_received_message(app, client, cb_auth, auth, method):
    body = {
        "eventType": "mms",
        "direction": "in",
        "messageId": "m-inbound000000000000000000",
        "from": "+15555550101",
        "to": "+15555550100",
        "text": "reply",
        "state": "received",
        "media": "[https://x.test/a.jpg, https://x.test/b.jpg]"
        if method == "GET"
        else ["https://x.test/a.jpg", "https://x.test/b.jpg"],
    }
    deliver(client, cb_auth, body, method)
    deliver(client, cb_auth, body, method, via="fallback")  # and again: still one message
    with app.app_context():
        inbound = db.session.scalars(select(Message).where(Message.direction == "in")).all()
        assert len(inbound) == 1
        assert inbound[0].status == "received"
        assert inbound[0].text == "reply"
        assert inbound[0].media == ["https://x.test/a.jpg", "https://x.test/b.jpg"]
        found = inbound[0].id
    detail = client.get("/api/messages/m-inbound000000000000000000", headers=auth).get_json()
    assert detail["id"] == found and detail["direction"] == "in"
    assert [e["duplicate"] for e in detail["events"]] == [False, True]
