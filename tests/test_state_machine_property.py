"""The state machine, property-tested: whatever order the carrier's events of one message
arrive in, however often, by whichever way (primary or fallback callback, GET or POST, a
reconcile answer, a journal replay), tagged or not, before or after the send's own response
was recorded, the message ends where the in-order sequence leads, and its timeline holds
every event that came."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app import messaging
from app.events import Received
from app.extensions import db
from app.ingest import EXTENSION
from app.models import STATUS_RANK, CallbackEvent, Message
from tests.conftest import make_config

pytestmark = pytest.mark.both_backends

PATHS = {"primary": "/callbacks/catapult", "fallback": "/callbacks/catapult/fallback"}
EXAMPLES = {"sqlite": 120, "postgresql": 40}

# The carrier's events of one message, in the order it sends them (catapult-v1.md §3):
# optionally queued/sending, then sent (perhaps with deliveryState waiting), then one receipt.
PRE = st.sampled_from([{"state": "queued"}, {"state": "sending"}])
SENT = st.sampled_from([{"state": "sent"}, {"state": "sent", "deliveryState": "waiting"}])
FINAL = st.one_of(
    st.just({"state": "sent", "deliveryState": "delivered", "deliveryCode": 0}),
    st.sampled_from([100, 720, 770, 902]).map(
        lambda code: {"state": "sent", "deliveryState": "not-delivered", "deliveryCode": code}
    ),
    st.sampled_from([610, 999]).map(lambda code: {"state": "error", "deliveryCode": code}),
)


def expected_status(events: list[dict]) -> str:
    """Where the in-order sequence leads (a model of the rules, not the code under test):
    the receipt's status if one came, else sent, else the send's own ``accepted``."""
    last = events[-1]
    if last["state"] == "error":
        return "error"
    if last.get("deliveryState") in ("delivered", "not-delivered"):
        return last["deliveryState"]
    return "sent" if last["state"] == "sent" else "accepted"


@st.composite
def sequences(draw) -> list[dict]:
    parts = [draw(st.none() | PRE), draw(st.none() | SENT), draw(st.none() | FINAL)]
    events = [p for p in parts if p is not None]
    return events or [draw(SENT)]


@dataclass(frozen=True)
class Delivery:
    event: int  # index into the in-order sequence
    way: str  # primary | fallback | reconcile | journal
    method: str  # GET | POST
    tagged: bool


@st.composite
def scenarios(draw):
    events = draw(sequences())
    copies = draw(st.lists(st.integers(1, 3), min_size=len(events), max_size=len(events)))
    deliveries = [
        Delivery(
            index,
            draw(st.sampled_from(["primary", "fallback", "reconcile", "journal"])),
            draw(st.sampled_from(["GET", "POST"])),
            draw(st.booleans()),
        )
        for index, count in enumerate(copies)
        for _ in range(count)
    ]
    # The send's response ("accepted", the carrier id) and the journal replays happen at
    # some point among the deliveries, like every other step.
    steps = [*deliveries, "accepted", *["replay"] * draw(st.integers(0, 2))]
    return events, draw(st.permutations(steps))


@pytest.fixture
def relay(tmp_path, db_url):
    from app import create_app
    from tests.conftest import close_app

    app = create_app(make_config(tmp_path, DATABASE_URL=db_url))
    with app.app_context():
        db.create_all()
    yield app
    close_app(app)


def _body(message_id: str, carrier_id: str, fields: dict, tagged: bool) -> dict:
    body = {
        "eventType": "sms",
        "direction": "out",
        "messageId": carrier_id,
        "from": "+15555550100",
        "to": "+15555550101",
        "segmentCount": 1,
        **fields,
    }
    if tagged:
        body["tag"] = message_id
    return body


def _run(app, events: list[dict], steps: list) -> tuple[str, int, int]:
    client = app.test_client()
    auth = {"Authorization": "Basic Y2ItdXNlcjpjYi1wYXNz"}  # cb-user:cb-pass (conftest)
    ingest = app.extensions[EXTENSION]
    carrier_id = "m-" + uuid.uuid4().hex[:23]
    with app.app_context():
        message = messaging.enqueue(db.session, [{"from": "+15555550100", "to": "+15555550101"}])[0]
        message.status = "sending"  # claimed and sent; its response not recorded yet
        db.session.commit()
        message_id = message.id
    for step in steps:
        if step == "accepted":
            with app.app_context():
                messaging.lock_for_write(db.session)
                message = db.session.get(Message, message_id, with_for_update=True)
                messaging.record_accepted(db.session, message, carrier_id)
                db.session.commit()
        elif step == "replay":
            ingest.replayer.run_once(wait=True)
        elif step.way == "reconcile":
            resource = {"id": carrier_id, **_body(message_id, carrier_id, events[step.event], True)}
            with app.app_context():
                messaging.lock_for_write(db.session)
                message = db.session.get(Message, message_id, with_for_update=True)
                messaging.record_reconcile(db.session, message, resource)
                db.session.commit()
        else:
            body = _body(message_id, carrier_id, events[step.event], step.tagged)
            if step.way == "journal":
                raw = urlencode(body) if step.method == "GET" else json.dumps(body)
                ingest.journal.append([Received("primary", step.method, raw)])
            elif step.method == "GET":
                assert (
                    client.get(f"{PATHS[step.way]}?{urlencode(body)}", headers=auth).status_code
                    == 200
                )
            else:
                assert client.post(PATHS[step.way], json=body, headers=auth).status_code == 200
    ingest.replayer.run_once(wait=True)
    with app.app_context():
        status = db.session.get(Message, message_id).status
        on_timeline = db.session.scalar(
            select(func.count())
            .select_from(CallbackEvent)
            .where(CallbackEvent.message_id == message_id)
        )
        unmatched = db.session.scalar(
            select(func.count())
            .select_from(CallbackEvent)
            .where(
                CallbackEvent.carrier_message_id == carrier_id, CallbackEvent.message_id.is_(None)
            )
        )
    return status, on_timeline, unmatched


def test_any_order_any_path_ends_where_the_in_order_sequence_does(relay, backend):
    @settings(
        max_examples=EXAMPLES[backend],
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenarios())
    def check(scenario):
        events, steps = scenario
        status, on_timeline, unmatched = _run(relay, events, steps)
        assert status == expected_status(events)
        deliveries = [s for s in steps if isinstance(s, Delivery)]
        assert on_timeline == len(deliveries) and unmatched == 0
        assert STATUS_RANK[status] >= STATUS_RANK["accepted"]

    check()
