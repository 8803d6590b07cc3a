"""Fault tests with real parts: gunicorn with the project's gunicorn.conf.py, a PostgreSQL
server the tests stop and start, SQLite files whose write lock a test holds."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import create_engine, func, select

from app import create_app, messaging
from app.extensions import db
from app.models import CallbackEvent, Message, utcnow
from tests import pg
from tests.conftest import CALLBACK_PASSWORD, CALLBACK_USER, close_app, make_config
from tests.servers import Gunicorn, relay_env

PATHS = {"primary": "/callbacks/catapult", "fallback": "/callbacks/catapult/fallback"}
AUTH = (CALLBACK_USER, CALLBACK_PASSWORD)


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL server of this module's own, so that stopping it harms no other test."""
    cluster = pg.TempCluster()
    url = cluster.start()
    try:
        yield cluster, url
    finally:
        cluster.stop()


def prepare_database(tmp_path, url: str, messages: int) -> list[tuple[str, str]]:
    """The relay's tables on ``url`` and ``messages`` accepted messages: (relay id, carrier id)."""
    app = create_app(make_config(tmp_path, DATABASE_URL=url))
    try:
        with app.app_context():
            db.create_all()
            rows = messaging.enqueue(
                db.session,
                [
                    {"from": "+15555550100", "to": f"+1555556{i:04d}", "text": "hi"}
                    for i in range(messages)
                ],
            )
            pairs = []
            for message in rows:
                message.status = "accepted"
                message.carrier_message_id = f"m-{uuid.uuid4().hex[:23]}"
                message.accepted_at = utcnow()
                pairs.append((message.id, message.carrier_message_id))
            db.session.commit()
    finally:
        close_app(app)
    return pairs


@pytest.fixture
def pg_schema(own_postgres):
    """A fresh schema on the module's server, as a DATABASE_URL."""
    cluster, server = own_postgres
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield cluster, pg.create_schema(server, name)


@pytest.fixture
def start_relay(tmp_path):
    """Start gunicorn relays (stopped at the end of the test, whatever happened)."""
    started: list[Gunicorn] = []

    def start(database_url: str, workers: int = 2, **env) -> Gunicorn:
        journal = env.pop("JOURNAL_DIR", tmp_path / "journal")
        relay = Gunicorn(
            relay_env(database_url, journal, **env),
            tmp_path / f"gunicorn-{len(started)}.log",
            workers=workers,
        )
        started.append(relay)
        relay.wait_ready()
        return relay

    yield start
    for relay in started:
        relay.stop()


@dataclass
class Answer:
    status: int | None
    seconds: float
    error: str | None = None


def callback(url: str, body: dict, method: str = "POST", via: str = "primary", timeout=10.0):
    """One callback as the carrier sends it; the status (None: no answer) and how long."""
    started = time.monotonic()
    try:
        if method == "GET":
            response = requests.get(
                f"{url}{PATHS[via]}?{urlencode(body)}", auth=AUTH, timeout=timeout
            )
        else:
            response = requests.post(f"{url}{PATHS[via]}", json=body, auth=AUTH, timeout=timeout)
        return Answer(response.status_code, time.monotonic() - started)
    except requests.RequestException as exc:
        return Answer(None, time.monotonic() - started, type(exc).__name__)


def event_body(carrier_id: str, tag: str | None = None, **fields) -> dict:
    body = {
        "eventType": "sms",
        "direction": "out",
        "messageId": carrier_id,
        "from": "+15555550100",
        "to": "+15555550101",
        "state": "sent",
        "segmentCount": 1,
        "time": "2026-12-01T10:00:00.000Z",
    }
    if tag:
        body["tag"] = tag
    body.update(fields)
    return body


def send_all(url: str, bodies: list[tuple[dict, str, str]], parallel: int = 8) -> list[Answer]:
    """Send (body, method, via) callbacks, ``parallel`` at a time; answers in order."""
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda item: callback(url, item[0], item[1], item[2]), bodies))


def mixed(bodies: list[dict]) -> list[tuple[dict, str, str]]:
    """Each body on a route and method of its own: POST/GET x primary/fallback in turn."""
    routes = [("POST", "primary"), ("GET", "primary"), ("POST", "fallback"), ("GET", "fallback")]
    return [(body, *routes[i % 4]) for i, body in enumerate(bodies)]


def stored_events(database_url: str) -> list[dict]:
    """Every stored callback event, in id order (request key, carrier id, via, method)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    CallbackEvent.request_key,
                    CallbackEvent.carrier_message_id,
                    CallbackEvent.via,
                    CallbackEvent.method,
                    CallbackEvent.received_at,
                    CallbackEvent.delivery_state,
                ).order_by(CallbackEvent.id)
            ).all()
    finally:
        engine.dispose()
    return [dict(row._mapping) for row in rows]


def statuses(database_url: str) -> dict[str, str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(Message.carrier_message_id, Message.status)).all())
    finally:
        engine.dispose()


def count_events(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(CallbackEvent))
    finally:
        engine.dispose()


def ready(url: str) -> dict:
    response = requests.get(f"{url}/readyz", timeout=5)
    return {"http": response.status_code, **response.json()}


def wait_for(predicate, timeout: float, interval: float = 0.1):
    """Poll until ``predicate()`` is truthy (returns it) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {predicate}")
        time.sleep(interval)
