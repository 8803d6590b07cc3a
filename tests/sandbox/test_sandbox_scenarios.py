"""Scenarios: seeded reproducibility and each hostile behaviour on its own knob."""

from __future__ import annotations

import time

import pytest

from app.sandbox import create_sandbox_app
from app.sandbox.events import DELIVERY_CODES
from app.sandbox.scenarios import SCENARIOS

FAST = {"delay_min_ms": 0, "delay_max_ms": 20, "slow_delay_ms": 40}


def sms(receiver=None, **fields) -> dict:
    body = {"from": "+19195551212", "to": "+19195551213", "text": "hi", "receiptRequested": "all"}
    if receiver is not None:
        body["callbackUrl"] = receiver.url("/cb")
        body["fallbackUrl"] = receiver.url("/fb")
    body.update(fields)
    return body


def plans(sandbox, http) -> list[dict]:
    records = http.get(f"{sandbox.url}/sandbox/messages", timeout=5).json()["messages"]
    return [r["plan"] for r in records if r["direction"] == "out"]


def run_batch(sandbox, http, count: int = 30) -> list[dict]:
    for i in range(count):
        body = sms(text=f"n{i}", receiptRequested=["none", "all", "error"][i % 3])
        assert http.post(sandbox.messages_url, json=body, auth=sandbox.auth, timeout=5).ok
    sandbox.wait_idle()
    return plans(sandbox, http)


def test_same_seed_same_decisions_other_seed_other_decisions(make_sandbox, http):
    first = run_batch(make_sandbox(scenario="hostile", seed=42, **FAST), http)
    again = run_batch(make_sandbox(scenario="hostile", seed=42, **FAST), http)
    other = run_batch(make_sandbox(scenario="hostile", seed=43, **FAST), http)
    assert first == again
    assert first != other
    outcomes = {p["outcome"] for p in first}
    assert "delivered" in outcomes and len(outcomes) > 1  # hostile mixes outcomes


def test_reset_restarts_the_seeded_decisions(make_sandbox, http):
    sandbox = make_sandbox(scenario="hostile", seed=5, **FAST)
    before = run_batch(sandbox, http, 15)
    assert http.post(f"{sandbox.url}/sandbox/reset", timeout=5).json()["reset"] is True
    assert run_batch(sandbox, http, 15) == before


def test_presets():
    assert SCENARIOS["perfect"].failure_share == 0 and SCENARIOS["perfect"].delay_max_ms <= 50
    realistic = SCENARIOS["realistic"]
    assert 0.05 <= realistic.failure_share <= 0.15 and realistic.inbound_share > 0
    assert realistic.delay_max_ms >= 1000
    hostile = SCENARIOS["hostile"]
    for knob in (
        "duplicate_share",
        "reorder_share",
        "early_share",
        "primary_outage_share",
        "garbage_share",
        "slow_share",
    ):
        assert getattr(hostile, knob) > 0, knob
    app = create_sandbox_app()
    assert app.extensions["catapult_sandbox"].options.scenario == "realistic"
    with pytest.raises(ValueError):
        create_sandbox_app(scenario="chaotic")
    with pytest.raises(ValueError):
        create_sandbox_app(failure_share=1.5)
    with pytest.raises(TypeError):
        create_sandbox_app(colour="blue")
    aliased = create_sandbox_app(outage_share=0.3, early_event_share=0.4)
    knobs = aliased.extensions["catapult_sandbox"].options.knobs
    assert (knobs.primary_outage_share, knobs.early_share) == (0.3, 0.4)


def test_config_shows_scenario_seed_and_knobs(make_sandbox, http):
    sandbox = make_sandbox(
        scenario="hostile", seed=9, duplicate_share=0.5, mps=3, reads_per_second=4
    )
    config = http.get(f"{sandbox.url}/sandbox/config", timeout=5).json()
    assert config["scenario"] == "hostile" and config["seed"] == 9 and config["mps"] == 3
    assert config["readsPerSecond"] == 4
    assert config["knobs"]["duplicate_share"] == 0.5
    assert config["knobs"]["reorder_share"] == SCENARIOS["hostile"].reorder_share
    assert "secret" not in config


def test_duplicates(make_sandbox, http, receiver):
    sandbox = make_sandbox(duplicate_share=1)
    http.post(sandbox.messages_url, json=sms(receiver), auth=sandbox.auth, timeout=5)
    sandbox.wait_idle()
    states = [r.json["deliveryState"] for r in receiver.at("/cb")]
    assert sorted(states) == ["delivered", "delivered", "waiting", "waiting"]
    log = http.get(f"{sandbox.url}/sandbox/callbacks", timeout=5).json()["callbacks"]
    assert sum(a["duplicate"] for a in log) == 2
    record = http.get(f"{sandbox.url}/sandbox/messages", timeout=5).json()["messages"][0]
    assert record["deliveryState"] == "delivered" and record["eventsGenerated"] == 4


def test_reordered_receipt_arrives_first_and_truth_is_the_last_logical_event(
    make_sandbox, http, receiver
):
    sandbox = make_sandbox(reorder_share=1, delay_min_ms=20, delay_max_ms=30)
    response = http.post(sandbox.messages_url, json=sms(receiver), auth=sandbox.auth, timeout=5)
    sandbox.wait_idle()
    assert [r.json["deliveryState"] for r in receiver.at("/cb")] == ["delivered", "waiting"]
    resource = http.get(response.headers["Location"], auth=sandbox.auth, timeout=5).json()
    assert resource["deliveryState"] == "delivered" and resource["deliveryCode"] == "0"
    record = http.get(f"{sandbox.url}/sandbox/messages", timeout=5).json()["messages"][0]
    assert record["plan"]["reordered"] is True and record["appliedSeq"] == 2


@pytest.mark.parametrize("multi", [False, True])
def test_early_events_arrive_before_the_send_response(make_sandbox, http, receiver, multi):
    sandbox = make_sandbox(early_share=1, delay_min_ms=200, delay_max_ms=300)
    body = sms(receiver, tag="rm-early")
    response = http.post(
        sandbox.messages_url, json=[body, body] if multi else body, auth=sandbox.auth, timeout=5
    )
    answered = time.monotonic()
    assert response.status_code == (202 if multi else 201)
    early = receiver.at("/cb")
    assert len(early) == (2 if multi else 1)
    assert all(r.at < answered for r in early)
    assert all(r.json["tag"] == "rm-early" and r.json["deliveryState"] == "waiting" for r in early)
    sandbox.wait_idle()
    log = http.get(f"{sandbox.url}/sandbox/callbacks", timeout=5).json()["callbacks"]
    assert [a["early"] for a in log] == [True] * len(early) + [False] * len(early)


def test_primary_outage_pushes_events_to_the_fallback(make_sandbox, http, receiver):
    sandbox = make_sandbox(primary_outage_share=1)
    http.post(sandbox.messages_url, json=sms(receiver), auth=sandbox.auth, timeout=5)
    sandbox.wait_idle()
    assert receiver.at("/cb") == []
    assert len(receiver.at("/fb")) == 2
    log = http.get(f"{sandbox.url}/sandbox/callbacks", timeout=5).json()["callbacks"]
    primaries = [a for a in log if a["via"] == "primary"]
    assert len(primaries) == 2
    for attempt in primaries:
        assert attempt["simulatedOutage"] is True
        assert attempt["statusCode"] is None and "simulated outage" in attempt["error"]
        assert attempt["outcome"] == "fell-back"
    assert [a["outcome"] for a in log if a["via"] == "fallback"] == ["delivered", "delivered"]


def test_garbage_in_optional_fields(make_sandbox, http, receiver):
    sandbox = make_sandbox(garbage_share=1, failure_share=1)
    http.post(sandbox.messages_url, json=sms(receiver), auth=sandbox.auth, timeout=5)
    sandbox.wait_idle()
    waiting, receipt = (r.json for r in receiver.at("/cb"))
    known = {
        "eventType",
        "direction",
        "messageId",
        "messageUri",
        "from",
        "to",
        "text",
        "time",
        "state",
        "deliveryState",
        "deliveryCode",
        "deliveryDescription",
        "segmentCount",
    }
    assert set(waiting) - known and set(receipt) - known  # unknown extra fields
    assert isinstance(receipt["deliveryCode"], str) and receipt["deliveryCode"].isdigit()
    assert receipt["deliveryDescription"] not in DELIVERY_CODES.values()
    record = http.get(f"{sandbox.url}/sandbox/messages", timeout=5).json()["messages"][0]
    assert record["deliveryCode"] == int(receipt["deliveryCode"])  # the truth is clean
    assert record["deliveryState"] == receipt["deliveryState"] == "not-delivered"


def test_inbound_replies(make_sandbox, http, receiver):
    sandbox = make_sandbox(inbound_share=1)
    response = http.post(
        sandbox.messages_url,
        json=sms(receiver, receiptRequested=None),
        auth=sandbox.auth,
        timeout=5,
    )
    original = response.headers["Location"].rsplit("/", 1)[1]
    sandbox.wait_idle()
    sent_event, reply = (r.json for r in receiver.at("/cb"))
    assert sent_event["messageId"] == original
    assert reply["direction"] == "in" and reply["state"] == "received"
    assert reply["eventType"] == "sms"
    assert (reply["from"], reply["to"]) == ("+19195551213", "+19195551212")
    assert reply["messageId"] != original and reply["messageId"].startswith("m-")
    assert reply["applicationId"] and "tag" not in reply
    assert reply["messageUri"].endswith("/" + reply["messageId"])
    got = http.get(reply["messageUri"], auth=sandbox.auth, timeout=5).json()
    assert (got["direction"], got["state"], got["text"]) == ("in", "received", reply["text"])
    listed = http.get(
        sandbox.messages_url, params={"direction": "in"}, auth=sandbox.auth, timeout=5
    ).json()
    assert [m["id"] for m in listed] == [reply["messageId"]]


def test_slow_receipts(make_sandbox, http, receiver):
    sandbox = make_sandbox(slow_share=1, slow_delay_ms=400, delay_min_ms=0, delay_max_ms=5)
    http.post(sandbox.messages_url, json=sms(receiver), auth=sandbox.auth, timeout=5)
    sandbox.wait_idle()
    first, receipt = receiver.at("/cb")
    assert receipt.at - first.at >= 0.38


def test_hostile_truth_is_the_last_logical_event(make_sandbox, http, receiver):
    sandbox = make_sandbox(scenario="hostile", seed=1234, early_wait_ms=500, **FAST)
    bodies = [
        sms(receiver, text=f"n{i}", receiptRequested=["none", "all", "error"][i % 3])
        for i in range(45)
    ]
    http.post(sandbox.messages_url, json=bodies, auth=sandbox.auth, timeout=10)
    sandbox.wait_idle()
    records = http.get(
        f"{sandbox.url}/sandbox/messages", params={"direction": "out"}, timeout=5
    ).json()["messages"]
    assert len(records) == 45
    assert any(r["plan"]["reordered"] for r in records)
    for record in records:
        logical = [e for e in record["plan"]["events"] if e["kind"] == "status"]
        last = max(logical, key=lambda e: e["seq"])
        assert record["settled"] is True
        assert record["state"] == last["state"]
        assert record["deliveryState"] == last.get("deliveryState")
        assert record["deliveryCode"] == last.get("deliveryCode")
        assert record["appliedSeq"] == last["seq"]
