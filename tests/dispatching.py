"""Helpers of the dispatcher, lease and retention tests: fake clocks, a fake carrier session,
queueing and reading messages, and moving the database's time on."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from datetime import timedelta

import requests
from prometheus_client import REGISTRY
from requests.structures import CaseInsensitiveDict
from sqlalchemy import select, update

from app import messaging
from app.catapult import CatapultClient
from app.dispatcher import Dispatcher
from app.extensions import db
from app.lease import LEASE_NAME
from app.models import Lease, Message, utcnow

BASE = "http://carrier.test"


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


def refused(_payloads):
    """A carrier script: the connection is refused (nothing was sent)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    return requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "refused")))


def lease(app) -> Lease | None:
    with app.app_context():
        row = db.session.get(Lease, LEASE_NAME)
        db.session.expunge_all()
        return row


def advance_db(app, seconds: float) -> None:
    """As if the database's clock moved ``seconds`` on: the lease's expiry and the messages'
    retry times move back by as much (a test cannot move the server's own clock)."""
    step = timedelta(seconds=seconds)
    with app.app_context():
        for row in db.session.scalars(select(Lease)):
            row.expires_at -= step
        for message in db.session.scalars(select(Message)):
            if message.next_attempt_at is not None:
                message.next_attempt_at -= step
            message.updated_at -= step
        db.session.commit()


def set_lease_expiry(app, when) -> None:
    with app.app_context():
        db.session.execute(update(Lease).values(expires_at=when))
        db.session.commit()
