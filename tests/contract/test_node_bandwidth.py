"""node-bandwidth 4.0.0 (npm) against the sandbox over HTTP: what the client returns and raises.

node-bandwidth accepts only 200/201/202, takes the id from the last segment of ``Location``,
renames a multi-send item's ``error`` result to ``failed``, re-issues a list query with the
parameters of ``Link rel="next"`` and raises ``RateLimitError`` on a 429 with
``X-RateLimit-Reset`` (catapult-v1.md 4). Other errors are ``UnexpectedResponseError`` with the
status and the body's ``message`` only, so the 400 codes are read off multi-send items.
"""

from __future__ import annotations

import time

import pytest

from tests.contract.cases import (
    BAD_CREDENTIALS_MESSAGE,
    BAD_SEND_IDS,
    BAD_SENDS,
    FROM,
    ISO_TIME,
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


def unexpected(error: dict, status: int) -> None:
    """node-bandwidth's UnexpectedResponseError with ``status``."""
    assert error["name"] == "UnexpectedResponseError", error
    assert error["isUnexpectedResponseError"] and not error["isRateLimitError"]
    assert error["statusCode"] == status


def test_send_one_returns_the_message_with_the_id_from_location(node, sandbox):
    [result] = node(sandbox, ("send", sms(text="first", tag="rm-1")))
    message = ok(result)
    assert MESSAGE_ID.fullmatch(message["id"]), message
    assert {k: message[k] for k in ("from", "to", "text", "tag")} == {
        "from": FROM,
        "to": TO,
        "text": "first",
        "tag": "rm-1",
    }
    stored = sandbox.store.get(message["id"])
    assert stored is not None and (stored.text, stored.tag) == ("first", "rm-1")


def test_send_several_gives_accepted_and_failed_items_in_request_order(node, sandbox):
    items = [
        sms(text="zero"),
        sms(to=""),
        sms(text="two", media="https://media.example/a.png"),
        sms(text="three", callbackTimeout="oops"),
        sms(text="four"),
    ]
    [result] = node(sandbox, ("sendMultiple", items))
    results = ok(result)
    assert [r["result"] for r in results] == [
        "accepted",
        "failed",
        "accepted",
        "failed",
        "accepted",
    ]
    # Each item carries the message it answers, so order is checked on the text sent.
    assert [r["message"]["text"] for r in results] == ["zero", "hello", "two", "three", "four"]
    ids = [r["message"]["id"] for r in results if r["result"] == "accepted"]
    assert all(MESSAGE_ID.fullmatch(i) for i in ids) and len(set(ids)) == 3
    assert [sandbox.store.get(i).text for i in ids] == ["zero", "two", "four"]
    assert results[1]["error"] == {
        "category": "bad-request",
        "code": "blank-property",
        "message": "The 'message' resource property 'to' must contain at least one "
        "non-whitespace character",
        "details": [],
    }
    assert "id" not in results[1]["message"]
    assert results[3]["error"]["code"] == "validation-error"
    assert len(sandbox.store.records()) == 3


def test_get_right_after_create(node, sandbox):
    [result] = node(sandbox, ("sendAndGet", sms(text="read me", tag="rm-2")))
    value = ok(result)
    got = value["got"]
    assert got["id"] == got["messageId"] == value["sent"]["id"]
    assert (got["from"], got["to"], got["text"], got["tag"]) == (FROM, TO, "read me", "rm-2")
    assert got["direction"] == "out"
    assert got["media"] == []
    assert got["segmentCount"] == 1
    assert got["receiptRequested"] == "none"
    assert got["callbackTimeout"] == 10000
    assert got["state"] in ("queued", "sending", "sent")
    assert ISO_TIME.fullmatch(got["time"])


def test_list_pages_through_link_next_keeping_the_filter(node, sandbox):
    batch = [sms(text=f"a{i}") for i in range(7)] + [sms(**{"from": OTHER_FROM}) for _ in range(2)]
    sent, listed = node(sandbox, ("sendMultiple", batch), ("listAll", {"from": FROM, "size": 3}))
    created = [r["message"]["id"] for r in ok(sent)[:7]]
    pages = ok(listed)
    assert [len(p["messages"]) for p in pages] == [3, 3, 1]
    assert [p["hasNextPage"] for p in pages] == [True, True, False]
    # node re-issues the query with the next link's parameters: the filter must be in it.
    for page in pages[:2]:
        assert page["nextLink"]["from"] == FROM
        assert page["nextLink"]["size"] == "3"
        assert page["nextLink"]["sortKeyLT"].isdigit()
    listed_ids = [m["id"] for p in pages for m in p["messages"]]
    assert sorted(listed_ids) == sorted(created)
    assert {m["from"] for p in pages for m in p["messages"]} == {FROM}
    # Pages are selected newest first (catapult-v1.md 2), ascending within a page.
    assert [m["id"] for m in pages[0]["messages"]] == created[4:7]
    assert [m["id"] for m in pages[2]["messages"]] == created[:1]


def test_wrong_secret_is_401_on_every_call(node, sandbox):
    results = node(
        sandbox,
        ("send", sms()),
        ("get", "m-aaaaaaaaaaaaaaaaaaaaaaa"),
        ("listAll", {}),
        secret="not-the-secret",
    )
    for result in results:
        error = failed(result)
        unexpected(error, 401)
        assert error["message"] == BAD_CREDENTIALS_MESSAGE
    assert sandbox.store.records() == []


@pytest.mark.parametrize(
    ("fields", "code", "message"), [c[1:] for c in BAD_SENDS], ids=BAD_SEND_IDS
)
def test_bad_send_is_400_with_the_platform_message_and_code(node, sandbox, fields, code, message):
    single, multi = node(sandbox, ("send", sms(**fields)), ("sendMultiple", [sms(**fields)]))
    error = failed(single)
    unexpected(error, 400)
    assert error["message"] == message
    [item] = ok(multi)
    assert item["result"] == "failed"
    assert (item["error"]["category"], item["error"]["code"]) == ("bad-request", code)
    assert item["error"]["message"] == message
    assert sandbox.store.records() == []


def test_unknown_message_is_404(node, sandbox):
    [result] = node(sandbox, ("get", "m-aaaaaaaaaaaaaaaaaaaaaaa"))
    error = failed(result)
    unexpected(error, 404)
    assert error["message"] == "The message 'm-aaaaaaaaaaaaaaaaaaaaaaa' could not be found"


def test_more_than_50_in_one_request_is_403_multi_message_limit(node, sandbox):
    [result] = node(sandbox, ("sendMultiple", [sms() for _ in range(51)]))
    error = failed(result)
    unexpected(error, 403)
    assert error["message"] == MULTI_LIMIT_MESSAGE
    assert sandbox.store.records() == []


def test_sends_over_the_rate_are_403_message_rate_limit(node, make_sandbox):
    sandbox = make_sandbox(mps=0.1)  # one send per 10 s
    first, second, multi = node(
        sandbox,
        ("send", sms(text="in time")),
        ("send", sms(text="too soon")),
        ("sendMultiple", [sms(text="also too soon")]),
    )
    assert MESSAGE_ID.fullmatch(ok(first)["id"])
    error = failed(second)
    unexpected(error, 403)  # over-limit sends are 403, not 429 (catapult-v1.md 1)
    assert error["message"] == RATE_LIMIT_MESSAGE
    [item] = ok(multi)
    assert item["result"] == "failed"
    assert (item["error"]["category"], item["error"]["code"]) == ("limit", "message-rate-limit")
    assert [r["text"] for r in sandbox.store.records()] == ["in time"]


def test_reads_over_the_rate_raise_rate_limit_error_with_the_reset(node, make_sandbox):
    sandbox = make_sandbox(reads_per_second=1)
    before_ms = time.time() * 1000
    sent, first, second = node(
        sandbox, ("send", sms()), ("listAll", {}), ("get", "m-aaaaaaaaaaaaaaaaaaaaaaa")
    )
    ok(sent)
    assert len(ok(first)[0]["messages"]) == 1
    error = failed(second)
    assert error["name"] == "RateLimitError" and error["isRateLimitError"], error
    assert error["statusCode"] == 429
    # X-RateLimit-Reset is epoch milliseconds (catapult-v1.md 1).
    assert before_ms <= int(error["limitReset"]) <= time.time() * 1000 + 1000
    # node hands over the whole body as the message; the documented body has no message key.
    body = error["message"]
    assert (body["category"], body["code"]) == ("too-many-requests", "rate-limit-reached")
    assert "message" not in body
