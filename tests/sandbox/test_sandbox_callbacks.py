"""The callback sender: sequences, fields, transports, auth, one try then fallback (section 3)."""

from __future__ import annotations

import base64
import json
import socket
import time
from urllib.parse import parse_qsl

import pytest

from app.sandbox.events import DELIVERY_CODES, ERROR_CODES, NOT_DELIVERED_CODES

MEDIA = ["https://media.example/a.png", "https://media.example/b.jpg?x=1&y=2"]


def sent(sandbox, http, body) -> tuple[str, str]:
    """POST one body; return (message id, Location)."""
    response = http.post(sandbox.messages_url, json=body, auth=sandbox.auth, timeout=10)
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    return location.rsplit("/", 1)[1], location


# (knobs, receiptRequested, mms) -> expected (state, deliveryState, code kind) per event
SEQUENCES = [
    ({}, "none", False, [("sent", None, None)]),
    ({"failure_share": 1}, "none", False, [("sent", None, None)]),
    ({"error_share": 1}, "none", False, [("error", None, None)]),
    ({}, "all", False, [("sent", "waiting", None), ("sent", "delivered", "zero")]),
    (
        {"failure_share": 1},
        "all",
        False,
        [("sent", "waiting", None), ("sent", "not-delivered", "failure")],
    ),
    ({"error_share": 1}, "all", False, [("error", "not-delivered", "error")]),
    ({}, "error", False, [("sent", None, None)]),
    (
        {"failure_share": 1},
        "error",
        False,
        [("sent", None, None), ("sent", "not-delivered", "failure")],
    ),
    ({"error_share": 1}, "error", False, [("error", "not-delivered", "error")]),
    ({}, None, True, [("sent", None, None)]),
]


@pytest.mark.parametrize(("knobs", "receipt", "mms", "expected"), SEQUENCES)
def test_event_sequence_and_fields(make_sandbox, http, receiver, knobs, receipt, mms, expected):
    sandbox = make_sandbox(**knobs)
    body = {
        "from": "+19195551212",
        "to": "+19195551213",
        "text": "a" * 200,
        "tag": "rm-42",
        "callbackUrl": receiver.url("/cb"),
    }
    if receipt:
        body["receiptRequested"] = receipt
    if mms:
        body["media"] = MEDIA
    message_id, location = sent(sandbox, http, body)
    sandbox.wait_idle()
    events = [r.json for r in receiver.at("/cb")]
    assert len(events) == len(expected)
    resource = http.get(location, auth=sandbox.auth, timeout=5).json()
    for event, (state, delivery_state, code_kind) in zip(events, expected, strict=True):
        assert event["eventType"] == ("mms" if mms else "sms")
        assert event["direction"] == "out"
        assert event["messageId"] == message_id
        assert event["messageUri"] == location
        assert (event["from"], event["to"]) == ("+19195551212", "+19195551213")
        assert event["text"] == "a" * 200
        assert event["time"] == resource["time"]
        assert event["segmentCount"] == (1 if mms else 2)
        assert event["tag"] == "rm-42"
        assert event["state"] == state
        assert event.get("deliveryState") == delivery_state
        if mms:
            assert event["media"] == MEDIA
        else:
            assert "media" not in event
        if code_kind is None:
            assert "deliveryCode" not in event and "deliveryDescription" not in event
        else:
            code = event["deliveryCode"]
            assert {
                "zero": code == 0,
                "failure": code in NOT_DELIVERED_CODES,
                "error": code in ERROR_CODES,
            }[code_kind]
            assert event["deliveryDescription"] == DELIVERY_CODES[code]
    # The store's truth matches the last event generated.
    last = events[-1]
    assert resource["state"] == last["state"]
    assert resource["deliveryState"] == last.get("deliveryState")
    expected_code = last.get("deliveryCode")
    assert resource["deliveryCode"] == (None if expected_code is None else str(expected_code))
    record = http.get(f"{sandbox.url}/sandbox/messages/{message_id}", timeout=5).json()
    assert record["deliveryCode"] == expected_code
    assert record["settled"] is True


def test_mms_errors_sometimes_carry_delivery_fields(make_sandbox, http, receiver):
    sandbox = make_sandbox(error_share=1, seed=3)
    body = {
        "from": "+19195551212",
        "to": "+19195551213",
        "media": MEDIA[:1],
        "callbackUrl": receiver.url("/cb"),
    }
    http.post(sandbox.messages_url, json=[body] * 20, auth=sandbox.auth, timeout=5)
    sandbox.wait_idle()
    events = [r.json for r in receiver.wait_for(20, "/cb")]
    assert all(e["state"] == "error" and e["eventType"] == "mms" for e in events)
    with_fields = [e for e in events if "deliveryCode" in e]
    assert 0 < len(with_fields) < 20
    assert all(e["deliveryState"] == "not-delivered" for e in with_fields)
    assert all("text" not in e for e in events)  # MMS without text: no text field


def test_post_transport_headers_and_body(sandbox, http, receiver):
    sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "h\u00e9 \U0001f600",
            "callbackUrl": receiver.url("/cb"),
        },
    )
    (request,) = receiver.wait_for(1, "/cb")
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert request.headers["User-Agent"].startswith("BandwidthAPI/v1 (")
    assert "Authorization" not in request.headers
    assert json.loads(request.body.decode("utf-8"))["text"] == "h\u00e9 \U0001f600"
    assert request.query_string == ""


def test_get_transport_sends_percent_encoded_query_parameters(sandbox, http, receiver):
    message_id, location = sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "a&b=c d/é",
            "receiptRequested": "all",
            "callbackUrl": receiver.url("/cb?route=1"),
            "callbackHttpMethod": "get",
        },
    )
    sandbox.wait_idle()
    first, receipt = receiver.at("/cb")
    for request in (first, receipt):
        assert request.method == "GET"
        assert request.body == b""
        assert request.headers["User-Agent"].startswith("BandwidthAPI/v1 (")
        assert request.args["route"] == "1"  # the URL's own query is kept
        assert request.args["messageId"] == message_id
        assert request.args["messageUri"] == location
        assert request.args["from"] == "+19195551212"
        assert request.args["text"] == "a&b=c d/é"
        assert request.args["eventType"] == "sms"
        assert request.args["segmentCount"] == "1"
        assert "tag" not in request.args  # absent fields are omitted
        assert "media" not in request.args
        # Percent-encoded: '+' must not arrive as a space, '/' and ':' are escaped.
        assert "from=%2B19195551212" in request.query_string
        assert "messageUri=http%3A%2F%2F127.0.0.1" in request.query_string
    assert first.args["deliveryState"] == "waiting" and "deliveryCode" not in first.args
    assert receipt.args["deliveryState"] == "delivered"
    assert receipt.args["deliveryCode"] == "0"
    assert receipt.args["deliveryDescription"] == "Message delivered to carrier"


def test_get_transport_sends_mms_media_as_a_bracketed_list(sandbox, http, receiver):
    sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "media": MEDIA,
            "tag": "t 1",
            "callbackUrl": receiver.url("/cb"),
            "callbackHttpMethod": "GET",
        },
    )
    (request,) = receiver.wait_for(1, "/cb")
    assert request.args["media"] == f"[{MEDIA[0]}, {MEDIA[1]}]"
    assert dict(parse_qsl(request.query_string))["media"] == request.args["media"]
    assert request.args["eventType"] == "mms"
    assert request.args["tag"] == "t 1"
    assert "text" not in request.args


def test_basic_credentials_come_from_the_url_userinfo(sandbox, http, receiver):
    url = receiver.url("/cb", user="relay%40cb", password="p%3Ass%2Fw")
    message_id, _ = sent(
        sandbox,
        http,
        {"from": "+19195551212", "to": "+19195551213", "text": "x", "callbackUrl": url},
    )
    (request,) = receiver.wait_for(1, "/cb")
    expected = base64.b64encode(b"relay@cb:p:ss/w").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    # The requested URL carries no credentials.
    assert "@" not in request.raw_uri and "relay" not in request.raw_uri
    assert request.headers["Host"] == f"127.0.0.1:{receiver.port}"
    sandbox.wait_idle()
    (attempt,) = http.get(f"{sandbox.url}/sandbox/callbacks", timeout=5).json()["callbacks"]
    assert attempt["messageId"] == message_id
    assert "p%3Ass" not in attempt["url"] and "***" in attempt["url"]


def test_fallback_credentials_are_its_own(sandbox, http, receiver):
    receiver.behaviour["/cb"] = (500, 0)
    sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "x",
            "callbackUrl": receiver.url("/cb", "a", "1"),
            "fallbackUrl": receiver.url("/fb", "b", "2"),
        },
    )
    (primary,) = receiver.wait_for(1, "/cb")
    (fallback,) = receiver.wait_for(1, "/fb")
    assert primary.headers["Authorization"] == "Basic " + base64.b64encode(b"a:1").decode()
    assert fallback.headers["Authorization"] == "Basic " + base64.b64encode(b"b:2").decode()


def attempts(sandbox, http) -> list[dict]:
    sandbox.wait_idle()
    return http.get(f"{sandbox.url}/sandbox/callbacks", timeout=5).json()["callbacks"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("primary", "fallback", "outcomes", "error_part"),
    [
        ((500, 0), (200, 0), ["fell-back", "delivered"], "HTTP 500"),
        ((302, 0), (204, 0), ["fell-back", "delivered"], "HTTP 302"),
        ((404, 0), (200, 0), ["fell-back", "delivered"], "HTTP 404"),
        ((200, 1.5), (200, 0), ["fell-back", "delivered"], "timeout"),
        ("refused", (200, 0), ["fell-back", "delivered"], "connection error"),
        ((500, 0), (503, 0), ["fell-back", "dropped"], "HTTP 500"),
        ((200, 1.5), (200, 1.5), ["fell-back", "dropped"], "timeout"),
    ],
    ids=["500", "302", "404", "timeout", "refused", "both-fail", "both-timeout"],
)
def test_one_try_then_fallback_then_drop(
    sandbox, http, receiver, primary, fallback, outcomes, error_part
):
    if primary == "refused":
        primary_url = f"http://127.0.0.1:{closed_port()}/cb"
    else:
        receiver.behaviour["/cb"] = primary
        primary_url = receiver.url("/cb")
    receiver.behaviour["/fb"] = fallback
    message_id, _ = sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "x",
            "callbackUrl": primary_url,
            "fallbackUrl": receiver.url("/fb"),
            "callbackTimeout": 300,
        },
    )
    log = attempts(sandbox, http)
    assert [a["outcome"] for a in log] == outcomes
    assert [a["via"] for a in log] == ["primary", "fallback"]
    assert log[0]["error"].startswith(error_part) or error_part in log[0]["error"]
    assert log[0]["dispatchId"] == log[1]["dispatchId"]
    assert all(a["messageId"] == message_id and a["eventSeq"] == 1 for a in log)
    assert log[0]["payload"] == log[1]["payload"]
    # Exactly one attempt each, never a retry.
    assert len(receiver.at("/fb")) == 1
    assert len(receiver.at("/cb")) == (0 if primary == "refused" else 1)
    if outcomes[-1] == "delivered":
        assert log[1]["statusCode"] in (200, 204) and log[1]["error"] is None
    else:
        assert log[1]["error"]


def test_success_is_any_2xx_and_no_fallback_is_tried(sandbox, http, receiver):
    receiver.behaviour["/cb"] = (202, 0)
    sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "x",
            "callbackUrl": receiver.url("/cb"),
            "fallbackUrl": receiver.url("/fb"),
        },
    )
    log = attempts(sandbox, http)
    assert [(a["via"], a["outcome"], a["statusCode"]) for a in log] == [
        ("primary", "delivered", 202)
    ]
    assert receiver.at("/fb") == []


def test_failure_without_fallback_drops_the_event(sandbox, http, receiver):
    receiver.behaviour["/cb"] = (500, 0)
    message_id, location = sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "x",
            "receiptRequested": "all",
            "callbackUrl": receiver.url("/cb"),
        },
    )
    log = attempts(sandbox, http)
    assert [(a["via"], a["outcome"]) for a in log] == [("primary", "dropped")] * 2
    assert len(receiver.at("/cb")) == 2
    # Dropped events still happened: the carrier's GET is the way to recover the final state.
    resource = http.get(location, auth=sandbox.auth, timeout=5).json()
    assert resource["deliveryState"] == "delivered"


def test_callback_timeout_is_honoured(sandbox, http, receiver):
    receiver.behaviour["/slow"] = (200, 0.6)
    # 200 ms: the 600 ms answer is too late.
    sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "x",
            "callbackUrl": receiver.url("/slow"),
            "callbackTimeout": 200,
        },
    )
    (attempt,) = attempts(sandbox, http)
    assert attempt["outcome"] == "dropped" and "timeout" in attempt["error"]
    assert 150 <= attempt["latencyMs"] < 550
    # 2000 ms (sent as a string): the same answer is in time.
    http.post(f"{sandbox.url}/sandbox/reset", timeout=5)
    sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "x",
            "callbackUrl": receiver.url("/slow"),
            "callbackTimeout": "2000",
        },
    )
    (attempt,) = attempts(sandbox, http)
    assert attempt["outcome"] == "delivered" and attempt["statusCode"] == 200
    assert attempt["latencyMs"] >= 550


def test_no_callback_url_sends_nothing_but_state_evolves(sandbox, http, receiver):
    message_id, location = sent(
        sandbox,
        http,
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "x",
            "receiptRequested": "all",
            "fallbackUrl": receiver.url("/fb"),
        },
    )
    log = attempts(sandbox, http)
    assert log == [] and receiver.received == []
    resource = http.get(location, auth=sandbox.auth, timeout=5).json()
    assert (resource["state"], resource["deliveryState"]) == ("sent", "delivered")


def test_events_of_different_messages_go_out_concurrently(make_sandbox, http, receiver):
    sandbox = make_sandbox(workers=8)
    receiver.behaviour["/slow"] = (200, 0.5)
    started = time.monotonic()
    items = [
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": f"n{i}",
            "callbackUrl": receiver.url("/slow"),
        }
        for i in range(8)
    ]
    response = http.post(sandbox.messages_url, json=items, auth=sandbox.auth, timeout=5)
    assert response.status_code == 202
    assert time.monotonic() - started < 0.4  # the send never waits for callbacks
    sandbox.wait_idle()
    elapsed = time.monotonic() - started
    assert len(receiver.at("/slow")) == 8
    assert elapsed < 1.5, elapsed  # 8 x 0.5 s one after another would take 4 s


def test_events_of_one_message_go_out_in_order(make_sandbox, http, receiver):
    sandbox = make_sandbox(delay_min_ms=0, delay_max_ms=0, workers=4)
    receiver.behaviour["/cb"] = (200, 0.05)  # a slow answer must not let the receipt overtake
    items = [
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": f"n{i}",
            "receiptRequested": "all",
            "callbackUrl": receiver.url("/cb"),
        }
        for i in range(10)
    ]
    http.post(sandbox.messages_url, json=items, auth=sandbox.auth, timeout=5)
    sandbox.wait_idle()
    by_message: dict[str, list[str]] = {}
    for request in receiver.at("/cb"):
        by_message.setdefault(request.json["messageId"], []).append(request.json["deliveryState"])
    assert len(by_message) == 10
    assert all(states == ["waiting", "delivered"] for states in by_message.values())
