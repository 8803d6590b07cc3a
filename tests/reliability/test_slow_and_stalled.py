"""A database that is slow, clients that are slow, bodies that are too big, a stop in the
middle of the traffic: against the relay under gunicorn with the project's gunicorn.conf.py."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import CALLBACK_PASSWORD, CALLBACK_USER, basic
from tests.reliability.conftest import (
    callback,
    count_events,
    event_body,
    mixed,
    prepare_database,
    ready,
    send_all,
    statuses,
    stored_events,
    wait_for,
)

AUTH_HEADER = basic(CALLBACK_USER, CALLBACK_PASSWORD)["Authorization"]


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'relay.sqlite3'}"


class HeldWriteLock:
    """Another connection holds the SQLite database's write lock (``BEGIN IMMEDIATE``)."""

    def __init__(self, url: str) -> None:
        self.con = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)

    def __enter__(self):
        self.con.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *_exc) -> None:
        self.con.execute("ROLLBACK")
        self.con.close()


def test_a_write_lock_held_past_the_budget_sends_callbacks_to_the_journal(
    tmp_path, sqlite_url, start_relay
):
    """SQLite-only deployments too: callbacks wait CALLBACK_DB_BUDGET_MS at most, then are
    journaled and answered; once the lock is let go each is stored exactly once."""
    messages = prepare_database(tmp_path, sqlite_url, 20)
    relay = start_relay(sqlite_url, CALLBACK_DB_BUDGET_MS=800)
    with HeldWriteLock(sqlite_url):
        first = send_all(relay.url, mixed([event_body(c, r) for r, c in messages[:8]]))
        # The host is in journal mode now: the next ones do not wait for the budget at all.
        then = send_all(relay.url, mixed([event_body(c, r) for r, c in messages[8:]]))
        state = ready(relay.url)
    assert [a.status for a in first + then] == [200] * 20
    assert all(0.7 < a.seconds < 1.5 for a in first), [a.seconds for a in first]
    assert max(a.seconds for a in then) < 0.5, [a.seconds for a in then]
    print(
        f"write lock held: first {max(a.seconds for a in first) * 1000:.0f} ms at most, "
        f"then {max(a.seconds for a in then) * 1000:.0f} ms at most"
    )
    assert state["http"] == 200 and state["degraded"] is True and state["database"] == "ok"
    wait_for(lambda: ready(relay.url)["journal"]["depth"] == 0, timeout=30)
    # The first ones were also in the writer's transaction when the lock came free: their
    # request keys make the replay skip them, so each callback is stored once.
    events = stored_events(sqlite_url)
    assert len(events) == 20 and len({e["request_key"] for e in events}) == 20
    assert set(statuses(sqlite_url).values()) == {"sent"}


class Trickler(threading.Thread):
    """A client that sends its request a few bytes at a time, forever (until ``stop``)."""

    def __init__(self, port: int, part: str, gap: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.part, self.gap = part, gap
        self.stopping = threading.Event()

    def run(self) -> None:
        body = b'{"messageId": "m-slow", "state": "sent"}' * 100
        head = (
            f"POST /callbacks/catapult HTTP/1.1\r\nHost: relay\r\nAuthorization: {AUTH_HEADER}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        ).encode()
        if self.part == "body":
            self.sock.sendall(head + b"\r\n")
            chunks = [body[i : i + 1] for i in range(len(body))]
        else:
            chunks = [head[i : i + 1] for i in range(len(head))]
        try:
            for chunk in chunks:
                if self.stopping.wait(self.gap):
                    return
                self.sock.sendall(chunk)
        except OSError:
            pass

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()


def _answers_while_trickling(relay, count: int = 20) -> list[float | None]:
    """Seconds each of ``count`` callbacks took while 8 clients trickle their headers and 4
    their bodies (None: no answer within 3 s)."""
    tricklers = [Trickler(relay.port, "headers", 0.5) for _ in range(8)]
    tricklers += [Trickler(relay.port, "body", 0.5) for _ in range(4)]
    for trickler in tricklers:
        trickler.start()
    try:
        time.sleep(1.0)  # every one of them is inside a request by now
        answers = []
        for i in range(count):
            answer = callback(relay.url, event_body(f"m-quick{i:017d}"), timeout=3)
            answers.append(answer.seconds if answer.status == 200 else None)
        return answers
    finally:
        for trickler in tricklers:
            trickler.stop()


def test_trickling_clients_do_not_keep_callbacks_from_being_answered(
    tmp_path, sqlite_url, start_relay
):
    prepare_database(tmp_path, sqlite_url, 1)
    relay = start_relay(sqlite_url)
    answers = _answers_while_trickling(relay)
    assert None not in answers and max(answers) < 1.0, answers
    print(f"trickling: 20/20 answered, slowest {max(answers) * 1000:.0f} ms")
    assert count_events(sqlite_url) == 20  # the trickled requests never completed


def test_with_sync_workers_the_same_clients_take_the_receiver_offline(
    tmp_path, sqlite_url, start_relay
):
    """Why gunicorn.conf.py does not use sync workers: the test above fails with them."""
    prepare_database(tmp_path, sqlite_url, 1)
    relay = start_relay(sqlite_url, GUNICORN_CMD_ARGS="--worker-class sync --threads 1")
    answers = _answers_while_trickling(relay, count=3)
    assert all(a is None or a >= 1.0 for a in answers), answers


def _raw_request(port: int, head: str, body: bytes = b"", read_timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head.encode() + body)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("authenticated", [True, False])
def test_an_oversized_body_is_refused_unread_and_nothing_is_stored(
    tmp_path, sqlite_url, start_relay, authenticated
):
    prepare_database(tmp_path, sqlite_url, 1)
    relay = start_relay(sqlite_url)
    auth = f"Authorization: {AUTH_HEADER}\r\n" if authenticated else ""
    started = time.monotonic()
    head = (
        f"POST /callbacks/catapult HTTP/1.1\r\nHost: relay\r\n{auth}"
        "Content-Type: application/json\r\nContent-Length: 30000000\r\n\r\n"
    )
    answer = _raw_request(relay.port, head, b'{"messageId": "' + b"x" * 100_000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"request-too-large"' in answer
    assert time.monotonic() - started < 2.0  # answered without waiting for 30 MB
    # Chunked, with no length announced: refused once it passes the limit.
    chunk = b"x" * 100_000
    chunked = (
        f"POST /callbacks/catapult/fallback HTTP/1.1\r\nHost: relay\r\n{auth}"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"%x\r\n%s\r\n" % (len(chunk), chunk) + b"0\r\n\r\n"
    answer = _raw_request(relay.port, chunked, body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # An over-long GET callback (query string) too.
    long_get = f"GET /callbacks/catapult?text={'y' * 70_000} HTTP/1.1\r\nHost: relay\r\n{auth}\r\n"
    assert _raw_request(relay.port, long_get).startswith(b"HTTP/1.1 413")
    assert count_events(sqlite_url) == 0


def test_a_get_callback_with_the_longest_text_is_stored(tmp_path, sqlite_url, start_relay):
    """2048 characters of emoji are ~25 KB percent-encoded in a GET callback's query string:
    over gunicorn's default request-line limit (4 KB), so gunicorn.conf.py raises it."""
    prepare_database(tmp_path, sqlite_url, 1)
    relay = start_relay(sqlite_url)
    answer = callback(relay.url, event_body("m-longtext", text="😀" * 1024), method="GET")
    assert answer.status == 200
    assert count_events(sqlite_url) == 1


def test_sigterm_with_callbacks_in_flight_answers_and_stores_every_one(
    tmp_path, sqlite_url, start_relay
):
    """Graceful shutdown: the callbacks being handled when SIGTERM comes are finished, stored
    and answered 200 before the workers exit; the inline dispatcher lets go of its lease."""
    messages = prepare_database(tmp_path, sqlite_url, 16)
    relay = start_relay(sqlite_url, DISPATCH="inline")
    wait_for(lambda: _lease(sqlite_url)[0], timeout=15)  # one worker's dispatcher holds it
    with ThreadPoolExecutor(16) as pool:
        with HeldWriteLock(sqlite_url):  # the callbacks wait for the database ...
            futures = [
                pool.submit(callback, relay.url, body, method, via)
                for body, method, via in mixed([event_body(c, r) for r, c in messages])
            ]
            time.sleep(0.4)
            relay.proc.send_signal(15)  # ... when SIGTERM arrives
            time.sleep(0.4)
        answers = [f.result() for f in futures]
    assert relay.proc.wait(timeout=30) == 0
    assert [a.status for a in answers] == [200] * 16, answers
    events = stored_events(sqlite_url)
    assert len(events) == 16 and len({e["request_key"] for e in events}) == 16
    assert "Traceback" not in relay.log(400)
    holder, expires, now = _lease(sqlite_url)
    assert holder and expires < now  # released on the way out: a standby takes over at once


def _lease(url: str) -> tuple[str | None, str | None, str]:
    """The dispatcher lease's holder and expiry, and the database's time now."""
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        row = con.execute("SELECT holder, expires_at FROM leases").fetchone() or (None, None)
        (now,) = con.execute("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").fetchone()
    finally:
        con.close()
    return row[0], row[1], now
