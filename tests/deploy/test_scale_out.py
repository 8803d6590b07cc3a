"""Scale-out, as deployed: the shipped nginx configuration in front of two gunicorn instances
(gunicorn.conf.py, DISPATCH=worker), two dispatch workers, a real PostgreSQL server, and the
sandbox in its hostile scenario calling back through nginx (primary and fallback listeners),
all on loopback ports the OS picked. During the run one web instance is SIGKILLed (master and
workers), then the active dispatcher in the middle of a carrier request, then a few hundred
connections trickle their headers at nginx. At the end the relay agrees with the carrier."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest
import requests
from sqlalchemy import create_engine, select

from app.messaging import event_status
from app.models import CallbackEvent, Lease, Message
from app.sandbox.server import SandboxServer
from tests import pg
from tests.conftest import API_KEY, CALLBACK_PASSWORD, CALLBACK_USER
from tests.deploy.conftest import json_lines, scrape
from tests.deploy.nginx import Nginx, free_port
from tests.reliability.conftest import wait_for
from tests.servers import BIN, ROOT, Dispatcher, Gunicorn, SlowSends, relay_env
from tests.test_e2e import attempt_key

pytestmark = pytest.mark.integration

BATCHES, BATCH = 8, 25
FLOOD = 300  # connections trickling their headers
FLOOD_S = 8.0


class Sender(threading.Thread):
    """A client of the send API through nginx: batches with an Idempotency-Key each, resent
    with the same key when the answer is lost (as a careful client does)."""

    def __init__(self, url: str, pause: float) -> None:
        super().__init__(daemon=True)
        self.url, self.pause = url, pause
        self.sent = 0  # batches accepted
        self.retries = 0
        self.error: str | None = None

    def batch(self, n: int) -> list[dict]:
        items = []
        for i in range(BATCH):
            item = {"from": f"+1919555010{i % 3}", "to": f"+1919556{n:02d}{i:02d}", "text": "hi"}
            if i % 5 == 0:
                item["callbackHttpMethod"] = "GET"
            item["receiptRequested"] = ["all", "all", "error", "none"][i % 4]
            if i == 7:
                item = {**item, "media": ["https://example.com/a.png"]}
                item.pop("receiptRequested")
            items.append(item)
        return items

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        for n in range(BATCHES):
            key = uuid.uuid4().hex
            for _attempt in range(10):
                try:
                    answer = requests.post(
                        f"{self.url}/api/messages",
                        json=self.batch(n),
                        headers={**headers, "Idempotency-Key": key},
                        timeout=10,
                    )
                    if answer.status_code == 202:
                        break
                except requests.RequestException:
                    pass
                self.retries += 1
                time.sleep(0.5)
            else:
                self.error = f"batch {n} never accepted"
                return
            self.sent += 1
            time.sleep(self.pause)


class HeaderFlood(threading.Thread):
    """``count`` connections to ``ports`` that send a request header one byte every half
    second and never finish it; one that nginx closes is opened again at once."""

    HEAD = b"POST /callbacks/catapult HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"

    def __init__(self, ports: list[int], count: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.ports, self.count, self.seconds = ports, count, seconds
        self.reopened = 0
        self.started = self.ended = 0.0

    def _open(self, n: int):
        sock = socket.create_connection(("127.0.0.1", self.ports[n % len(self.ports)]), timeout=2)
        sock.setblocking(False)
        return sock

    def run(self) -> None:
        socks = [self._open(n) for n in range(self.count)]
        sent = [0] * self.count
        self.started = time.monotonic()
        try:
            while time.monotonic() - self.started < self.seconds:
                for n, sock in enumerate(socks):
                    try:
                        sock.send(
                            self.HEAD[sent[n] % len(self.HEAD) : sent[n] % len(self.HEAD) + 1]
                        )
                        sent[n] += 1
                    except OSError:  # nginx gave up on it (client_header_timeout): another one
                        sock.close()
                        socks[n], sent[n] = self._open(n), 0
                        self.reopened += 1
                time.sleep(0.5)
        finally:
            self.ended = time.monotonic()
            for sock in socks:
                sock.close()


def probe_callbacks(url: str, until: threading.Event) -> list[tuple[int | None, float]]:
    """Callbacks sent through nginx every 100 ms until ``until``: (status, seconds) each."""
    answers = []
    session = requests.Session()
    while not until.is_set():
        body = {"eventType": "sms", "messageId": f"m-probe{uuid.uuid4().hex[:17]}", "state": "sent"}
        started = time.monotonic()
        try:
            status = session.post(
                f"{url}/callbacks/catapult",
                json=body,
                auth=(CALLBACK_USER, CALLBACK_PASSWORD),
                timeout=5,
            ).status_code
        except requests.RequestException:
            status = None
        answers.append((status, time.monotonic() - started))
        until.wait(0.1)
    return answers


def lease_holder(engine) -> str | None:
    with engine.connect() as conn:
        return conn.scalar(select(Lease.holder))


@pytest.mark.timeout(300)  # about 30 s alone; the suite's 120 s leaves no room on a busy machine
def test_two_instances_behind_nginx_survive_kills_and_a_header_flood(tmp_path, postgres_server):
    started_at = time.monotonic()
    url = pg.create_schema(postgres_server, f"t_{uuid.uuid4().hex[:12]}")
    engine = create_engine(url)
    ports = (free_port(), free_port())  # nginx's, named in the relay's callback URLs
    processes: list = []
    nginx = None
    with SandboxServer(scenario="hostile", seed=23) as sandbox:
        slow = SlowSends(sandbox.app.wsgi_app, 0.4)
        sandbox.app.wsgi_app = slow
        env = relay_env(
            url,
            tmp_path / "journal",  # one host: the instances share its journal
            DISPATCH="worker",
            PUBLIC_BASE_URL=f"http://127.0.0.1:{ports[0]}",
            FALLBACK_BASE_URL=f"http://127.0.0.1:{ports[1]}",
            CATAPULT_API_URL=sandbox.url,
            CATAPULT_USER_ID=sandbox.user_id,
            CATAPULT_API_TOKEN=sandbox.token,
            CATAPULT_API_SECRET=sandbox.secret,
            RECONCILE_AFTER_S="2",
            TRUSTED_PROXIES="1",
        )
        try:
            # The release phase, then the web and worker roles, then the front.
            subprocess.run(
                [str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                timeout=120,
            )
            webs = [Gunicorn(env, tmp_path / f"web-{n}.log", workers=2) for n in "ab"]
            processes += webs
            for web in webs:
                web.wait_ready()
            workers = {}
            for name in "ab":
                worker = Dispatcher(env, tmp_path / f"worker-{name}.log")
                workers[worker.pid] = worker
                processes.append(worker)
            nginx = Nginx([f"127.0.0.1:{web.port}" for web in webs], keep=tmp_path, ports=ports)
            sender = Sender(nginx.url, pause=0.8)
            sender.start()

            # 1. A web instance dies whole (master and workers) while traffic flows.
            wait_for(lambda: sender.sent >= 2, timeout=30)
            webs[0].kill()

            # 2. The active dispatcher dies in the middle of a carrier request.
            wait_for(lambda: sender.sent >= 4, timeout=30)
            holder = wait_for(lambda: lease_holder(engine), timeout=15)
            assert slow.in_flight.wait(15)
            victim = int(holder.split(":")[-2])
            workers[victim].proc.kill()
            killed_at = time.monotonic()
            new_holder = wait_for(
                lambda: (h := lease_holder(engine)) != holder and h, timeout=15, interval=0.05
            )
            takeover = time.monotonic() - killed_at
            assert int(new_holder.split(":")[-2]) in set(workers) - {victim}

            # 3. Hundreds of clients trickle their headers at nginx; callbacks keep coming.
            flood = HeaderFlood([ports[0]] * 5 + [ports[1]], FLOOD, FLOOD_S)
            flood.start()
            time.sleep(1.0)  # all of them are connected and trickling by now
            stop = threading.Event()
            probes: list = []
            prober = threading.Thread(
                target=lambda: probes.extend(probe_callbacks(nginx.url, stop)), daemon=True
            )
            prober.start()
            flood.join(FLOOD_S + 10)
            stop.set()
            prober.join(10)
            sender.join(60)
            assert sender.error is None and sender.sent == BATCHES

            # The relay converges on the carrier's truth.
            sandbox.wait_idle(timeout=60)

            def settled():
                truth = {m["tag"]: m for m in _truth(sandbox) if m["direction"] == "out"}
                ours = _messages(engine)
                return all(
                    ours.get(tag, {}).get("status")
                    == event_status(t["state"], t.get("deliveryState"))
                    for tag, t in truth.items()
                ) and (truth, ours)

            truth, ours = wait_for(settled, timeout=60, interval=0.5)
            # The surviving instance's metrics: the database's view, read at scrape time.
            metrics = scrape(webs[1].url)
            sent = [m for m in _truth(sandbox) if m["direction"] == "out"]
            attempts = requests.get(f"{sandbox.url}/sandbox/callbacks", timeout=10).json()
            events = _events(engine)
        finally:
            if nginx is not None:
                nginx.stop()
            for process in reversed(processes):
                process.stop()
            engine.dispose()

    # Every message is where the carrier says, and none was sent twice.
    assert len(sent) == len({m["tag"] for m in sent}) == len(ours) == BATCHES * BATCH
    for tag, record in truth.items():
        message = ours[tag]
        assert message["carrier_message_id"] == record["id"]
        assert (message["delivery_state"], message["delivery_code"]) == (
            record.get("deliveryState"),
            record.get("deliveryCode"),
        ), record

    # Every callback the sandbox saw answered 2xx is in the event log. A row more than that
    # was committed by the instance that died before it could answer: nginx's retry on the
    # other instance stored it again (flagged duplicate, not applied twice), or the carrier saw
    # the attempt fail and its fallback try stored it again.
    def keys(items):
        return Counter(attempt_key(a["via"], a["method"], a["payload"] or {}) for a in items)

    answered = keys(a for a in attempts["callbacks"] if 200 <= (a["statusCode"] or 0) < 300)
    failed = keys(
        a
        for a in attempts["callbacks"]
        if not 200 <= (a["statusCode"] or 0) < 300 and not a["simulatedOutage"]
    )
    stored = Counter(
        attempt_key(e["via"], e["method"], e["payload"] or {})
        for e in events
        if not str((e["payload"] or {}).get("messageId", "")).startswith("m-probe")
        and e["via"] != "reconcile"
    )
    assert not answered - stored, answered - stored
    extra = stored - answered
    assert not extra - (keys(e for e in events if e["duplicate"]) + failed), extra

    assert metrics[("relay_queue_depth", ())] == 0
    assert metrics[("relay_time_to_receipt_count", ())] > 0
    p50 = metrics[("relay_time_to_receipt_seconds", (("quantile", "0.5"),))]
    assert 0 <= p50 <= metrics[("relay_time_to_receipt_seconds", (("quantile", "0.95"),))] < 60

    # The standby took over within 10 s.
    assert takeover < 10.0, takeover

    # During the flood nginx held the trickling clients (and cut them off: reopened), and
    # every callback, the probes' and the carrier's, was answered 200 in under a second.
    assert flood.reopened >= FLOOD // 2, flood.reopened
    assert len(probes) >= 40 and all(status == 200 for status, _ in probes), probes
    slowest = max(seconds for _, seconds in probes)
    assert slowest < 1.0, slowest
    window = [a for a in attempts["callbacks"] if _in_window(a, flood) and not a["simulatedOutage"]]
    assert window and all(a["statusCode"] == 200 and a["latencyMs"] < 1000 for a in window)

    # Nothing secret or personal in any log of the run (relay lines are JSON, scrubbed;
    # nginx's never carry a query string or credentials).
    secrets = [CALLBACK_PASSWORD, API_KEY, sandbox.secret, sandbox.token]
    numbers = {m["from"][2:] for m in sent} | {m["to"][2:] for m in sent}
    for log in sorted(tmp_path.glob("*.log")):
        text = log.read_text(errors="replace")
        assert not [s for s in secrets if s in text], log.name
        assert not [n for n in numbers if n in text], log.name
    # Every line of the instance that lived, of both workers and of nginx's access log is JSON;
    # nginx says which requests it tried on two instances.
    for name in ("web-b", "worker-a", "worker-b"):
        assert json_lines(tmp_path / f"{name}.log")
    front = json_lines(tmp_path / "nginx-access.log")
    assert all(line["request_id"] for line in front)
    retried = [line for line in front if ", " in line["upstream"]]
    print(
        f"scale-out: {len(sent)} messages, {len(attempts['callbacks'])} callback attempts, "
        f"{len(events)} events stored ({sum(extra.values())} extra), takeover {takeover:.1f} s, "
        f"{sender.retries} send retries, {len(retried)} requests nginx retried, flood reopened "
        f"{flood.reopened}, {len(probes)} probes (slowest {slowest * 1000:.0f} ms), "
        f"{len(window)} carrier callbacks in the flood window (slowest "
        f"{max(a['latencyMs'] for a in window):.0f} ms), "
        f"{time.monotonic() - started_at:.0f} s in all"
    )
    assert time.monotonic() - started_at < 180


def _truth(sandbox) -> list[dict]:
    return requests.get(f"{sandbox.url}/sandbox/messages", timeout=10).json()["messages"]


def _in_window(attempt: dict, flood: HeaderFlood) -> bool:
    from datetime import datetime

    finished = datetime.fromisoformat(attempt["at"].replace("Z", "+00:00")).timestamp()
    # The flood's monotonic window on the wall clock (attempts record when they finished).
    offset = time.time() - time.monotonic()
    return flood.started + 1.0 + offset <= finished <= flood.ended + offset


def _messages(engine) -> dict[str, dict]:
    M = Message.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                M.c.id,
                M.c.status,
                M.c.carrier_message_id,
                M.c.delivery_state,
                M.c.delivery_code,
            ).where(M.c.direction == "out")
        ).all()
    return {row.id: dict(row._mapping) for row in rows}


def _events(engine) -> list[dict]:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        return [
            {"via": e.via, "method": e.method, "payload": e.payload, "duplicate": e.duplicate}
            for e in session.scalars(select(CallbackEvent))
        ]
