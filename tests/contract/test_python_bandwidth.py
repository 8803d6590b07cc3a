"""The python ``bandwidth-sdk`` 3.1.0 v1 client (PyPI) against the sandbox over HTTP.

The SDK parses every body labelled ``application/json`` (an empty one raised JSONDecodeError on
the first ``send_message``), reads the id off ``Location``, snake-cases resources, fetches
``Link rel="next"`` URLs verbatim and raises ``BandwidthMessageAPIException`` with the body's
``code`` and ``message`` (catapult-v1.md 4).
"""

from __future__ import annotations

import pytest

from tests.contract.cases import (
    BAD_CREDENTIALS_MESSAGE,
    BAD_SEND_IDS,
    BAD_SENDS,
    FROM,
    MESSAGE_ID,
    MULTI_LIMIT_MESSAGE,
    OTHER_FROM,
    RATE_LIMIT_MESSAGE,
    TEST_TIMEOUT,
    TO,
    failed,
    ok,
    sms,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT)

# The SDK's keyword for each message field (it sends every one, null when unset).
KEYWORDS = {
    "from": "from_",
    "receiptRequested": "receipt_requested",
    "callbackUrl": "callback_url",
    "callbackHttpMethod": "callback_http_method",
    "callbackTimeout": "callback_timeout",
    "fallbackUrl": "fallback_url",
}


def keywords(message: dict) -> dict:
    """``send_message`` keyword arguments for a message dict."""
    return {KEYWORDS.get(k, k): v for k, v in message.items()}


def api_error(error: dict, status: int, code: str) -> None:
    """The SDK's BandwidthMessageAPIException with ``status`` and ``code``."""
    assert error["name"] == "BandwidthMessageAPIException", error
    assert (error["status_code"], error["code"]) == (status, code)


def test_send_message_returns_the_id_from_location(python_sdk, sandbox):
    [result] = python_sdk(sandbox, ("send_message", keywords(sms(text="first", tag="rm-1"))))
    message_id = ok(result)
    assert MESSAGE_ID.fullmatch(message_id), message_id
    stored = sandbox.store.get(message_id)
    assert stored is not None and (stored.from_, stored.text, stored.tag) == (FROM, "first", "rm-1")
    # Every optional key went as null, and null means absent (catapult-v1.md 1).
    assert (stored.receipt_requested, stored.callback_url, stored.media) == ("none", None, ())


def test_send_messages_keeps_request_order(python_sdk, sandbox):
    items = [sms(text="zero"), sms(to=None), sms(text="two")]
    [result] = python_sdk(sandbox, ("send_messages", items))
    results = ok(result)
    assert [r["result"] for r in results] == ["accepted", "error", "accepted"]
    assert [r["message"]["text"] for r in results] == ["zero", "hello", "two"]
    for item in (results[0], results[2]):
        assert item["location"] == f"{sandbox.messages_url}/{item['id']}"  # absolute
        assert MESSAGE_ID.fullmatch(item["id"])
    assert results[1]["error"]["code"] == "missing-property"
    assert [sandbox.store.get(results[i]["id"]).text for i in (0, 2)] == ["zero", "two"]


def test_get_message_right_after_send(python_sdk, sandbox):
    [result] = python_sdk(sandbox, ("send_and_get", keywords(sms(text="read me", tag="rm-2"))))
    value = ok(result)
    got = value["got"]
    assert got["id"] == got["message_id"] == value["id"]
    assert (got["from"], got["to"], got["text"], got["tag"]) == (FROM, TO, "read me", "rm-2")
    assert (got["direction"], got["segment_count"], got["media"]) == ("out", 1, [])
    assert got["receipt_requested"] == "none" and got["callback_timeout"] == 10000


def test_list_messages_fetches_link_next_verbatim(python_sdk, sandbox):
    batch = [sms(text=f"a{i}") for i in range(7)] + [sms(**{"from": OTHER_FROM})]
    sent, listed = python_sdk(
        sandbox, ("send_messages", batch), ("list_messages", {"from_": FROM, "size": 3})
    )
    created = [item["id"] for item in ok(sent)[:7]]
    items = ok(listed)
    assert sorted(item["id"] for item in items) == sorted(created)
    assert [item["id"] for item in items[:3]] == created[4:7]  # newest page first
    calls = listed["calls"]
    assert len(calls) == 3
    assert calls[0]["url"] == sandbox.messages_url and calls[0]["params"]["size"] == 3
    for call in calls[1:]:
        # The next URL is absolute and complete: the SDK adds nothing to it.
        assert call["url"].startswith(sandbox.messages_url + "?") and call["params"] is None
        assert "sortKeyLT=" in call["url"] and "from=%2B19195551212" in call["url"]


def test_wrong_secret_is_401(python_sdk, sandbox):
    results = python_sdk(
        sandbox,
        ("send_message", keywords(sms())),
        ("get_message", "m-aaaaaaaaaaaaaaaaaaaaaaa"),
        ("list_messages", {}),
        secret="not-the-secret",
    )
    for result in results:
        error = failed(result)
        api_error(error, 401, "unauthorized")
        assert error["message"] == BAD_CREDENTIALS_MESSAGE


@pytest.mark.parametrize(
    ("fields", "code", "message"), [c[1:] for c in BAD_SENDS], ids=BAD_SEND_IDS
)
def test_bad_send_is_400_with_code_and_message(python_sdk, sandbox, fields, code, message):
    single, multi = python_sdk(
        sandbox, ("send_message", keywords(sms(**fields))), ("send_messages", [sms(**fields)])
    )
    error = failed(single)
    api_error(error, 400, code)
    assert error["message"] == message
    [item] = ok(multi)
    assert item["result"] == "error" and item["error"]["code"] == code
    assert sandbox.store.records() == []


def test_unknown_message_is_404_message_not_found(python_sdk, sandbox):
    [result] = python_sdk(sandbox, ("get_message", "m-aaaaaaaaaaaaaaaaaaaaaaa"))
    api_error(failed(result), 404, "message-not-found")


def test_more_than_50_is_403_multi_message_limit(python_sdk, sandbox):
    [result] = python_sdk(sandbox, ("send_messages", [sms() for _ in range(51)]))
    error = failed(result)
    api_error(error, 403, "multi-message-limit")
    assert error["message"] == MULTI_LIMIT_MESSAGE


def test_sends_over_the_rate_are_403_message_rate_limit(python_sdk, make_sandbox):
    sandbox = make_sandbox(mps=0.1)
    first, second = python_sdk(
        sandbox, ("send_message", keywords(sms())), ("send_message", keywords(sms()))
    )
    assert MESSAGE_ID.fullmatch(ok(first))
    error = failed(second)
    api_error(error, 403, "message-rate-limit")
    assert error["message"] == RATE_LIMIT_MESSAGE


def test_the_documented_429_body_trips_the_sdk(python_sdk, make_sandbox):
    # catapult-v1.md 4: the SDK reads data['message'], and the documented 429 body has none. The
    # sandbox follows the platform, so this SDK cannot report a read rate limit; the relay's
    # own client copes (tests/test_catapult_client.py).
    sandbox = make_sandbox(reads_per_second=1)
    first, second = python_sdk(sandbox, ("list_messages", {}), ("list_messages", {}))
    assert ok(first) == []
    assert failed(second) == {"name": "KeyError", "message": "'message'"}
