"""``/sandbox/*``: messages with their truth, callback attempts, idle, reset."""

from __future__ import annotations

import time


def test_messages_and_callbacks_shapes(sandbox, http, receiver):
    response = http.post(
        sandbox.messages_url,
        json={
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "x",
            "tag": "rm-1",
            "receiptRequested": "all",
            "callbackUrl": receiver.url("/cb", "u", "secretpw"),
        },
        auth=sandbox.auth,
        timeout=5,
    )
    message_id = response.headers["Location"].rsplit("/", 1)[1]
    sandbox.wait_idle()
    listing = http.get(f"{sandbox.url}/sandbox/messages", timeout=5).json()
    assert listing["count"] == 1
    (record,) = listing["messages"]
    assert record["id"] == message_id
    assert (record["state"], record["deliveryState"], record["deliveryCode"]) == (
        "sent",
        "delivered",
        0,
    )
    assert record["settled"] is True and record["eventsPlanned"] == record["eventsGenerated"] == 2
    assert record["plan"]["outcome"] == "delivered"
    assert [e["seq"] for e in record["plan"]["events"]] == [1, 2]
    assert http.get(f"{sandbox.url}/sandbox/messages/{message_id}", timeout=5).json() == record
    assert http.get(f"{sandbox.url}/sandbox/messages/m-nope", timeout=5).status_code == 404

    log = http.get(f"{sandbox.url}/sandbox/callbacks", timeout=5).json()
    assert log["count"] == 2
    first, second = log["callbacks"]
    assert set(first) >= {
        "id",
        "dispatchId",
        "eventSeq",
        "messageId",
        "url",
        "method",
        "via",
        "statusCode",
        "error",
        "latencyMs",
        "outcome",
        "simulatedOutage",
        "duplicate",
        "early",
        "at",
        "payload",
    }
    assert (first["eventSeq"], second["eventSeq"]) == (1, 2)
    assert first["messageId"] == message_id and first["method"] == "POST"
    assert first["via"] == "primary" and first["outcome"] == "delivered"
    assert first["statusCode"] == 200 and first["error"] is None and first["latencyMs"] >= 0
    assert "secretpw" not in first["url"] and first["url"].endswith("/cb")
    assert first["payload"]["deliveryState"] == "waiting"
    assert second["payload"]["deliveryState"] == "delivered"
    filtered = http.get(
        f"{sandbox.url}/sandbox/callbacks", params={"messageId": "m-x"}, timeout=5
    ).json()
    assert filtered == {"count": 0, "callbacks": []}


def test_idle_and_reset(make_sandbox, http, receiver):
    sandbox = make_sandbox(delay_min_ms=300, delay_max_ms=300)
    assert http.get(f"{sandbox.url}/sandbox/idle", timeout=5).json() == {
        "idle": True,
        "pending": 0,
        "inFlight": 0,
    }
    body = {
        "from": "+19195551212",
        "to": "+19195551213",
        "text": "x",
        "receiptRequested": "all",
        "callbackUrl": receiver.url("/cb"),
    }
    http.post(sandbox.messages_url, json=[body] * 3, auth=sandbox.auth, timeout=5)
    status = http.get(f"{sandbox.url}/sandbox/idle", timeout=5).json()
    assert status["idle"] is False and status["pending"] == 6
    reset = http.post(f"{sandbox.url}/sandbox/reset", timeout=5).json()
    assert reset == {"reset": True, "cancelledEvents": 6}
    assert http.get(f"{sandbox.url}/sandbox/idle", timeout=5).json()["idle"] is True
    assert http.get(f"{sandbox.url}/sandbox/messages", timeout=5).json()["count"] == 0
    time.sleep(0.4)
    assert receiver.received == []  # cancelled events never go out
    assert http.get(f"{sandbox.url}/sandbox/callbacks", timeout=5).json()["count"] == 0


def test_wait_for_quiescence(make_sandbox, http, receiver):
    sandbox = make_sandbox(delay_min_ms=100, delay_max_ms=150)
    body = {
        "from": "+19195551212",
        "to": "+19195551213",
        "text": "x",
        "receiptRequested": "all",
        "callbackUrl": receiver.url("/cb"),
    }
    http.post(sandbox.messages_url, json=[body] * 5, auth=sandbox.auth, timeout=5)
    deadline = time.monotonic() + 5
    while not http.get(f"{sandbox.url}/sandbox/idle", timeout=5).json()["idle"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert len(receiver.received) == 10
    log = http.get(f"{sandbox.url}/sandbox/callbacks", timeout=5).json()
    assert log["count"] == 10


def test_store_and_server_accessors(sandbox):
    assert sandbox.url.startswith("http://127.0.0.1:")
    assert (sandbox.user_id, sandbox.token, sandbox.secret) == (
        "u-sandbox",
        "sandbox-token",
        "sandbox-secret",
    )
    assert sandbox.app.extensions["catapult_sandbox"] is sandbox.sandbox
    assert sandbox.store.records() == []
