"""The outbox: one notification per status change, written in the change's own transaction on
every path, describing the message as of the change; nothing at all when nobody subscribes."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import messaging
from app.db_setup import lock_for_write, write_transaction
from app.events import Received
from app.extensions import db
from app.ingest import apply_events
from app.models import Message, utcnow
from app.rawsql import RawTx
from app.receive import store_event
from app.schemas import MessageSchema
from app.webhooks import outbox
from app.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.test_callbacks import deliver, event, make_message

pytestmark = pytest.mark.both_backends


def add_endpoint(app, events=("*",), enabled=True, session=None) -> str:
    endpoint = WebhookEndpoint(
        url="https://93.184.215.14/hook",  # never called here: no worker runs in these tests
        events=list(events),
        secret="whsec_" + "A" * 43 + "=",
        enabled=enabled,
    )
    if session is not None:
        session.add(endpoint)
        session.flush()
        return endpoint.id
    with app.app_context():
        db.session.add(endpoint)
        db.session.commit()
        return endpoint.id


def notifications(app, endpoint_id=None) -> list[tuple[str, str, dict]]:
    """(message id, type, body) of every delivery row, in id order."""
    with app.app_context():
        stmt = select(WebhookDelivery).order_by(WebhookDelivery.id)
        if endpoint_id:
            stmt = stmt.where(WebhookDelivery.endpoint_id == endpoint_id)
        return [(d.message_id, d.type, json.loads(d.body)) for d in db.session.scalars(stmt)]


def types(app, message_id=None) -> list[str]:
    return [t for m, t, _ in notifications(app) if message_id in (None, m)]


def statements_for(app, payload) -> int:
    """Statements one callback event costs inside an already prepared batch."""
    with app.app_context(), write_transaction(db.engine) as dbapi:
        tx = RawTx(dbapi, db.engine.dialect)
        outbox.prepare(tx)
        before = tx.statements
        store_event(tx, via="primary", method="POST", raw=json.dumps(payload), payload=payload)
        return tx.statements - before


def test_one_insert_per_change_and_nothing_without_subscribers(app):
    quiet = make_message(app, carrier_id="m-quiet00000000000000000001")
    without = statements_for(app, event(tag=quiet, carrier_id="m-quiet00000000000000000001"))
    duplicate = statements_for(app, event(tag=quiet, carrier_id="m-quiet00000000000000000001"))
    assert notifications(app) == []
    add_endpoint(app, events=["message.delivered"])  # subscribed, but not to "sent"
    other = make_message(app, carrier_id="m-other00000000000000000001")
    payload = event(tag=other, carrier_id="m-other00000000000000000001")
    assert statements_for(app, payload) == without
    add_endpoint(app)
    loud = make_message(app, carrier_id="m-loud000000000000000000001")
    payload = event(tag=loud, carrier_id="m-loud000000000000000000001")
    assert statements_for(app, payload) == without + 1  # the one INSERT
    assert statements_for(app, payload) == duplicate  # it changes nothing: no row
    assert types(app) == ["message.sent"]


def test_every_change_once_in_order_with_the_message_as_it_was(app, client, cb_auth):
    add_endpoint(app)
    message_id = make_message(app)
    sent = event(tag=message_id)
    receipt = event(tag=message_id, deliveryState="delivered", deliveryCode=0)
    for body, via in [(sent, "primary"), (sent, "fallback"), (receipt, "primary")]:
        assert deliver(client, cb_auth, body, via=via).status_code == 200
    assert deliver(client, cb_auth, sent).status_code == 200  # late: changes nothing
    rows = notifications(app)
    assert [t for _, t, _ in rows] == ["message.sent", "message.delivered"]
    first, second = rows[0][2], rows[1][2]
    assert first["data"]["status"] == "sent" and first["data"]["deliveryState"] is None
    assert second["data"]["deliveryState"] == "delivered" and second["data"]["deliveryCode"] == 0
    assert second["timestamp"] == second["data"]["updatedAt"]
    with app.app_context():  # the last one is the message resource, exactly as the API shows it
        assert second["data"] == MessageSchema().dump(db.session.get(Message, message_id))


def test_resource_is_the_api_resource_field_for_field(app):
    with app.app_context():
        [message] = messaging.enqueue(
            db.session,
            [
                {
                    "from": "+15555550100",
                    "to": "+15555550101",
                    "media": ["https://m.example/a.png"],
                    "tag": "order-7",
                    "text": "caf\u00e9 \U0001f600",
                    "callbackHttpMethod": "GET",
                }
            ],
        )
        now = utcnow()
        message.status, message.final_at, message.segment_count = "rejected", now, 1
        message.error = {"category": "bad-request", "code": "x", "message": "no", "extra": 1}
        message.delivery_code, message.code_mismatch = 720, True
        db.session.commit()
        expected = MessageSchema().dump(message)
        assert outbox.resource(outbox._Columns(message)) == expected
        body = json.loads(outbox.body("rejected", outbox._Columns(message), now))
    assert body["data"] == expected and body["type"] == "message.rejected"


def test_a_parked_event_is_notified_when_it_is_attached(app, client, cb_auth):
    add_endpoint(app)
    message_id = make_message(app, status="sending", carrier_id=None)
    untagged = event(carrier_id="m-parked0000000000000000001")
    assert deliver(client, cb_auth, untagged).status_code == 200
    assert notifications(app) == []  # parked: it changed nothing yet
    with app.app_context():
        message = db.session.get(Message, message_id)
        messaging.record_accepted(db.session, message, "m-parked0000000000000000001")
        db.session.commit()
    assert types(app) == ["message.accepted", "message.sent"]


def test_inbound_messages_are_notified_once(app, client, cb_auth):
    endpoint = add_endpoint(app, events=["message.received"])
    inbound = event(carrier_id="m-inbound000000000000000001", direction="in", state="received")
    for via in ("primary", "fallback"):
        assert deliver(client, cb_auth, inbound, via=via).status_code == 200
    [(message_id, kind, body)] = notifications(app, endpoint)
    assert kind == "message.received" and body["data"]["direction"] == "in"
    with app.app_context():
        assert body["data"] == MessageSchema().dump(db.session.get(Message, message_id))


def test_dispatcher_outcomes_and_released_claims_are_notified(app):
    add_endpoint(app)
    ids = [make_message(app, status="sending", carrier_id=None) for _ in range(4)]
    with app.app_context():
        rejected, unknown, stale, retried = (db.session.get(Message, i) for i in ids)
        error = {"category": "bad-request", "code": "blank-property", "message": "x"}
        messaging.record_rejected(db.session, rejected, error)
        messaging.record_unknown(db.session, unknown, {"category": "unavailable", "code": "t"})
        messaging.record_retry(db.session, retried, utcnow())  # back to queued: not told
        stale.claimed_by = "a-dead-dispatcher"
        db.session.commit()
        assert messaging.release_stale_claims(db.session, "me") == 1
        db.session.commit()
    rows = notifications(app)
    assert [(m, t) for m, t, _ in rows] == [
        (ids[0], "message.rejected"),
        (ids[1], "message.unknown"),
        (ids[2], "message.unknown"),
    ]
    assert rows[0][2]["data"]["error"] == error
    assert rows[2][2]["data"]["error"]["code"] == "dispatcher-lost"


def test_reconcile_answers_are_notified(app):
    add_endpoint(app)
    message_id = make_message(app, status="sent")
    resource = {
        "id": "m-aaaaaaaaaaaaaaaaaaaaaaa",
        "state": "sent",
        "deliveryState": "delivered",
        "deliveryCode": 0,
        "direction": "out",
    }
    with app.app_context():
        messaging.record_reconcile(db.session, db.session.get(Message, message_id), resource)
        db.session.commit()
        messaging.record_reconcile(db.session, db.session.get(Message, message_id), resource)
        db.session.commit()  # the same answer again: a duplicate, nothing to tell
    assert types(app) == ["message.delivered"]


def test_each_endpoint_gets_only_what_it_subscribed_to(app, client, cb_auth):
    delivered = add_endpoint(app, events=["message.delivered"])
    everything_off = add_endpoint(app, events=["*"], enabled=False)
    sent = add_endpoint(app, events=["message.sent", "message.error"])
    message_id = make_message(app)
    deliver(client, cb_auth, event(tag=message_id))
    deliver(client, cb_auth, event(tag=message_id, deliveryState="delivered", deliveryCode=0))
    assert [t for _, t, _ in notifications(app, delivered)] == ["message.delivered"]
    assert [t for _, t, _ in notifications(app, sent)] == ["message.sent"]
    assert notifications(app, everything_off) == []


def test_the_notification_rolls_back_with_its_change(app):
    add_endpoint(app)
    message_id = make_message(app)
    payload = event(tag=message_id)
    with app.app_context():
        with pytest.raises(RuntimeError), write_transaction(db.engine) as dbapi:
            store_event(
                RawTx(dbapi, db.engine.dialect),
                via="primary",
                method="POST",
                raw="{}",
                payload=payload,
            )
            raise RuntimeError("the transaction fails after the change")
        message = db.session.get(Message, message_id)
        assert message.status == "accepted"
        messaging.record_rejected(db.session, message, {"code": "x"})
        db.session.rollback()  # a dispatcher record that did not commit
    assert notifications(app) == []
    received = Received("primary", "POST", json.dumps(payload))
    assert apply_events_in(app, [received])[0].outcome == "applied"
    assert types(app) == ["message.sent"]  # committed: always with its notification


def apply_events_in(app, events):
    with app.app_context():
        return apply_events(db.engine, events)


def test_a_change_committed_after_an_endpoint_write_is_notified(app):
    """The endpoint write and a callback batch overlap: the batch waits for the endpoint's
    commit (SQLite's write lock, PostgreSQL's endpoint lock) and then sees it."""
    message_id = make_message(app)
    with app.app_context():
        engine = db.engine
    session = Session(engine)
    lock_for_write(session)
    outbox.lock_endpoints(session)
    add_endpoint(app, session=session)
    received = Received("primary", "POST", json.dumps(event(tag=message_id)))
    results = []
    batch = threading.Thread(target=lambda: results.append(apply_events(engine, [received])))
    batch.start()
    time.sleep(0.3)
    assert batch.is_alive()  # waiting for the endpoint write to end
    session.commit()
    session.close()
    batch.join(10)
    assert results and results[0][0].outcome == "applied"
    assert types(app) == ["message.sent"]
