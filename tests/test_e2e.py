"""End to end over real HTTP: the relay sends to the Catapult sandbox, which calls the relay's
callback URLs exactly as given (credentials in the URL, GET or POST, fallback on failure).

After each run, the relay must agree with the sandbox's own truth for every message, and hold
every callback the sandbox saw answered 2xx exactly once per attempt.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import pytest
import requests
from sqlalchemy import select

from app import create_app
from app.dispatcher import Dispatcher
from app.extensions import db
from app.messaging import event_status
from app.models import CallbackEvent, Message
from app.sandbox.server import SandboxServer
from tests.conftest import API_KEY, close_app, make_config
from tests.servers import ServedApp

pytestmark = pytest.mark.both_backends

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SMS = {"from": "+19195550100", "text": "hello"}


class Relay:
    """The relay app served on loopback with its dispatcher running, pointed at ``sandbox``."""

    def __init__(self, tmp_path, db_url, sandbox: SandboxServer, **config):
        self.served = ServedApp()
        url = self.served.url
        settings = {
            "PUBLIC_BASE_URL": url,
            "FALLBACK_BASE_URL": url,
            "CATAPULT_API_URL": sandbox.url,
            "CATAPULT_USER_ID": sandbox.user_id,
            "CATAPULT_API_TOKEN": sandbox.token,
            "CATAPULT_API_SECRET": sandbox.secret,
            "CALLBACK_TIMEOUT_MS": 3000,
            "DATABASE_URL": db_url,
            **config,
        }
        self.app = create_app(make_config(tmp_path, **settings))
        with self.app.app_context():
            db.create_all()
        self.served.start(self.app)
        self.url = url
        self.stop_event = threading.Event()
        self.dispatcher = Dispatcher(self.app)
        self.thread = threading.Thread(
            target=self.dispatcher.run_forever, args=(self.stop_event,), daemon=True
        )
        self.thread.start()

    def send(self, body):
        response = requests.post(f"{self.url}/api/messages", json=body, headers=HEADERS, timeout=10)
        assert response.status_code in (201, 202), response.text
        return response.json()

    def messages(self):
        with self.app.app_context():
            rows = db.session.scalars(select(Message)).all()
            db.session.expunge_all()
            return rows

    def events(self):
        with self.app.app_context():
            rows = db.session.scalars(select(CallbackEvent).order_by(CallbackEvent.id)).all()
            db.session.expunge_all()
            return rows

    def wait_dispatched(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [m for m in self.messages() if m.status in ("queued", "sending")]
            if not pending:
                return
            time.sleep(0.1)
        raise AssertionError(f"{len(pending)} messages still waiting to be sent")

    def close(self):
        self.stop_event.set()
        self.thread.join(timeout=10)
        self.served.stop()
        close_app(self.app)


def traffic(relay: Relay) -> None:
    """A mix like the demo's: singles, a batch of 50, MMS, GET callbacks, receipt options."""
    relay.send({**SMS, "to": "+19195550101", "tag": "single"})
    relay.send(
        [
            {
                **SMS,
                "to": f"+1919555{1000 + i:04d}",
                "text": f"batch {i}",
                "receiptRequested": ["all", "error", "none"][i % 3],
            }
            for i in range(50)
        ]
    )
    relay.send({**SMS, "to": "+19195550102", "media": "https://example.com/a.png"})
    relay.send(
        {
            **SMS,
            "to": "+19195550103",
            "media": ["https://example.com/b.png"],
            "text": None,
            "callbackHttpMethod": "get",
        }
    )
    relay.send(
        [
            {
                **SMS,
                "to": f"+1919555{2000 + i:04d}",
                "callbackHttpMethod": "GET",
                "receiptRequested": "all",
            }
            for i in range(10)
        ]
    )


def expected_status(truth: dict) -> str:
    return event_status(truth["state"], truth.get("deliveryState"))


def attempt_key(via, method, payload):
    code = payload.get("deliveryCode")
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    return (
        via,
        method,
        payload.get("messageId"),
        payload.get("state"),
        payload.get("deliveryState"),
        code,
    )


def run(tmp_path, db_url, scenario, **knobs):
    with SandboxServer(scenario=scenario, seed=11, **knobs) as sandbox:
        relay = Relay(tmp_path, db_url, sandbox)
        try:
            traffic(relay)
            relay.wait_dispatched()
            sandbox.wait_idle(timeout=60)
            truth = requests.get(f"{sandbox.url}/sandbox/messages", timeout=10).json()
            attempts = requests.get(f"{sandbox.url}/sandbox/callbacks", timeout=10).json()
            return truth["messages"], attempts["callbacks"], relay.messages(), relay.events()
        finally:
            relay.close()


@pytest.mark.parametrize("scenario", ["perfect", "realistic", "hostile"])
def test_relay_converges_to_the_sandbox_truth(tmp_path, db_url, scenario):
    truth, attempts, messages, events = run(tmp_path, db_url, scenario)
    outbound = {m.id: m for m in messages if m.direction == "out"}
    assert len(outbound) == 63
    sent = [t for t in truth if t["direction"] == "out"]
    assert len(sent) == 63
    for record in sent:
        message = outbound[record["tag"]]  # tag = the relay's id
        assert message.carrier_message_id == record["id"]
        assert (message.status, message.delivery_state, message.delivery_code) == (
            expected_status(record),
            record.get("deliveryState"),
            record.get("deliveryCode"),
        ), record
    # Every attempt the sandbox saw answered 2xx is in the relay's log exactly once.
    answered = Counter(
        attempt_key(a["via"], a["method"], a["payload"])
        for a in attempts
        if a["statusCode"] and 200 <= a["statusCode"] < 300
    )
    stored = Counter(attempt_key(e.via, e.method, e.payload or {}) for e in events)
    assert stored == answered
    assert not any(a["statusCode"] and a["statusCode"] >= 300 for a in attempts)
    # Inbound replies the relay was told about became received messages.
    inbound_truth = {
        a["payload"]["messageId"]
        for a in attempts
        if a["payload"].get("direction") == "in" and a["outcome"] != "dropped"
    }
    inbound = {m.carrier_message_id for m in messages if m.direction == "in"}
    assert inbound == inbound_truth
    assert all(m.status == "received" for m in messages if m.direction == "in")
    # GET callbacks were used and stored as such.
    assert any(e.method == "GET" for e in events)
    assert not any(e.unparseable for e in events if scenario != "hostile")
    if scenario == "perfect":
        # Receipts (RECEIPT_REQUESTED=all unless the message says otherwise) end SMS
        # delivered; "error"/"none" receipts and MMS end at sent when all goes well.
        for message in outbound.values():
            effective = message.receipt_requested or "all"
            wants_receipt = message.media is None and effective == "all"
            assert message.status == ("delivered" if wants_receipt else "sent"), message.id


def test_fallback_deliveries_are_recorded_as_fallback(tmp_path, db_url):
    truth, attempts, messages, events = run(tmp_path, db_url, "perfect", primary_outage_share=0.5)
    via_fallback = [a for a in attempts if a["via"] == "fallback" and a["statusCode"] == 200]
    assert via_fallback, "the sandbox should have pushed some events to the fallback"
    stored = Counter(e.via for e in events)
    assert stored["fallback"] == len(via_fallback)
    assert stored["primary"] == sum(
        1 for a in attempts if a["via"] == "primary" and a["statusCode"] == 200
    )
    assert all(m.status in ("delivered", "sent") for m in messages if m.direction == "out")


def test_early_events_are_attached(tmp_path, db_url):
    truth, attempts, messages, events = run(tmp_path, db_url, "perfect", early_share=1.0)
    early = [a for a in attempts if a["early"] and a["statusCode"] == 200]
    assert early, "the sandbox should have sent events before its send response"
    by_key = {attempt_key(e.via, e.method, e.payload or {}): e for e in events}
    for attempt in early:
        event = by_key[attempt_key(attempt["via"], attempt["method"], attempt["payload"])]
        assert event.message_id is not None  # attached, by tag at once or after parking
    known = {m.carrier_message_id for m in messages}
    assert {t["id"] for t in truth if t["direction"] == "out"} <= known


def test_dropped_receipts_are_recovered_by_the_reconciler(tmp_path, db_url):
    """Primary down for half the events and no fallback listening: the carrier drops them
    (one try each, catapult-v1.md §3); the reconciler's GET message recovers the truth."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with SandboxServer(scenario="perfect", seed=5, primary_outage_share=0.5) as sandbox:
        relay = Relay(tmp_path, db_url, sandbox, FALLBACK_BASE_URL=dead, RECONCILE_AFTER_S=1)
        try:
            relay.send([{**SMS, "to": f"+1919555{3000 + i:04d}"} for i in range(12)])
            relay.wait_dispatched()
            sandbox.wait_idle(timeout=30)
            attempts = requests.get(f"{sandbox.url}/sandbox/callbacks", timeout=10).json()
            assert any(a["outcome"] == "dropped" for a in attempts["callbacks"])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(m.status == "delivered" for m in relay.messages()):
                    break
                time.sleep(0.2)
            assert [m.status for m in relay.messages()] == ["delivered"] * 12
            reconciled = [e for e in relay.events() if e.via == "reconcile"]
            assert reconciled and all(e.applied or e.duplicate for e in reconciled)
        finally:
            relay.close()
