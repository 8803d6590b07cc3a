"""Every send validation rule, single (400) and as a multi-send item (catapult-v1.md 1)."""

from __future__ import annotations

from typing import Any

import pytest

MEDIA = "https://media.example/cat.gif"
ABSENT = object()


def build(**changes: Any) -> dict[str, Any]:
    """A valid body with changes applied; ``ABSENT`` removes the key."""
    body: dict[str, Any] = {"from": "+19195551212", "to": "+19195551213", "text": "hi"}
    for key, value in changes.items():
        if value is ABSENT:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def prop(name: str) -> str:
    return f"The 'message' resource property '{name}'"


REJECTED = [
    # (changes, code, message fragment)
    ({"from": ABSENT}, "missing-property", prop("from") + " is required but was not specified"),
    ({"from": None}, "missing-property", prop("from") + " is required"),
    ({"from": ""}, "blank-property", prop("from") + " must contain at least one non-whitespace"),
    ({"from": "   "}, "blank-property", prop("from")),
    ({"from": "9195551212"}, "validation-error", "Invalid phone number"),
    ({"from": "+0195551212"}, "validation-error", "Invalid phone number"),
    ({"from": "+1919555121299999"}, "validation-error", "Invalid phone number"),
    ({"from": "12345"}, "validation-error", "Invalid phone number"),  # from: E.164 only
    ({"from": 19195551212}, "validation-error", "Invalid phone number"),
    ({"to": ABSENT}, "missing-property", prop("to") + " is required but was not specified"),
    ({"to": ""}, "blank-property", prop("to") + " must contain at least one non-whitespace"),
    ({"to": "abc"}, "validation-error", "Invalid phone number"),
    ({"to": "1234"}, "validation-error", "Invalid phone number"),  # too short for a short code
    ({"to": "1234567"}, "validation-error", "Invalid phone number"),  # too long for one
    ({"to": "+1 919 555 1213"}, "validation-error", "Invalid phone number"),
    ({"text": ABSENT}, "missing-property", prop("text") + " is required but was not specified"),
    ({"text": None}, "missing-property", prop("text") + " is required"),
    ({"text": ""}, "blank-property", prop("text") + " must contain at least one non-whitespace"),
    ({"text": " \n "}, "blank-property", prop("text")),
    ({"text": "x" * 2049}, "validation-error", prop("text") + " exceeds the limit of 2048"),
    ({"text": {"a": 1}}, "validation-error", "Bad parameters"),
    ({"media": "ftp://media.example/x"}, "validation-error", "Invalid media URL"),
    ({"media": [MEDIA, "not a url"]}, "validation-error", "Invalid media URL"),
    ({"media": ["https://"]}, "validation-error", "Invalid media URL"),
    ({"media": [MEDIA, 7]}, "validation-error", "Invalid media URL"),
    ({"media": ""}, "blank-property", prop("media")),
    ({"media": {"url": MEDIA}}, "validation-error", "Bad parameters"),
    (
        {"receiptRequested": "sometimes"},
        "validation-error",
        prop("receiptRequested") + " must be one of the following values: none, all, error",
    ),
    ({"receiptRequested": 1}, "validation-error", "must be one of the following values"),
    ({"media": MEDIA, "receiptRequested": "all"}, "validation-error", "'receiptRequested'"),
    ({"media": [MEDIA], "receiptRequested": "none"}, "validation-error", "'media'"),
    ({"callbackUrl": "not-a-url"}, "callback-invalid-url", "not a valid callbackUrl/fallbackUrl"),
    ({"callbackUrl": "ftp://host/cb"}, "callback-invalid-url", "The URL ftp://host/cb"),
    ({"callbackUrl": ""}, "callback-invalid-url", "is not a valid callbackUrl/fallbackUrl"),
    ({"callbackUrl": "http://host:99999/cb"}, "callback-invalid-url", "callbackUrl/fallbackUrl"),
    ({"callbackUrl": 5}, "callback-invalid-url", "callbackUrl/fallbackUrl"),
    ({"fallbackUrl": "relay/fallback"}, "callback-invalid-url", "callbackUrl/fallbackUrl"),
    (
        {"callbackHttpMethod": "PUT"},
        "validation-error",
        prop("callbackHttpMethod") + " must be one of the following values: GET, POST",
    ),
    ({"callbackHttpMethod": 1}, "validation-error", "must be one of the following values"),
    (
        {"callbackTimeout": 0},
        "validation-error",
        prop("callbackTimeout") + " must be greater than 0",
    ),
    ({"callbackTimeout": -5}, "validation-error", "must be greater than 0"),
    (
        {"callbackTimeout": 10001},
        "validation-error",
        prop("callbackTimeout") + " exceeds the limit of 10000",
    ),
    ({"callbackTimeout": "10001"}, "validation-error", "exceeds the limit of 10000"),
    ({"callbackTimeout": "soon"}, "validation-error", prop("callbackTimeout")),
    ({"callbackTimeout": 2.5}, "validation-error", prop("callbackTimeout")),
    ({"callbackTimeout": True}, "validation-error", prop("callbackTimeout")),
    ({"tag": ["a"]}, "validation-error", "Bad parameters"),
]


def case_id(case: tuple) -> str:
    changes = case[0]
    return ",".join(f"{k}={'ABSENT' if v is ABSENT else repr(v)[:20]}" for k, v in changes.items())


@pytest.mark.parametrize(("changes", "code", "fragment"), REJECTED, ids=map(case_id, REJECTED))
def test_single_send_rejection(sandbox, send, check_error, changes, code, fragment):
    error = check_error(send(build(**changes)), 400, "bad-request", code)
    assert fragment in error["message"]
    assert sandbox.store.records() == []


@pytest.mark.parametrize(("changes", "code", "fragment"), REJECTED, ids=map(case_id, REJECTED))
def test_multi_send_item_rejection(sandbox, send, changes, code, fragment):
    response = send([build(text="before"), build(**changes), build(text="after")])
    assert response.status_code == 202
    first, bad, last = response.json()
    assert first["result"] == "accepted" and last["result"] == "accepted"
    assert bad["result"] == "error"
    assert set(bad["error"]) == {"category", "code", "message", "details"}
    assert bad["error"]["category"] == "bad-request"
    assert bad["error"]["code"] == code
    assert fragment in bad["error"]["message"]
    assert bad["error"]["details"] == []


ACCEPTED = [
    ({"text": "x" * 2048}, {"text": "x" * 2048}),
    ({"to": "12345"}, {"to": "12345"}),  # US/CA short codes
    ({"to": "123456"}, {"to": "123456"}),
    ({"media": MEDIA, "text": ABSENT}, {"media": [MEDIA], "text": None}),
    ({"media": [MEDIA], "text": ""}, {"media": [MEDIA], "text": ""}),
    ({"media": []}, {"media": []}),
    ({"receiptRequested": "all"}, {"receiptRequested": "all"}),
    ({"receiptRequested": "error"}, {"receiptRequested": "error"}),
    ({"receiptRequested": "none"}, {"receiptRequested": "none"}),
    ({"callbackTimeout": 1}, {"callbackTimeout": 1}),
    ({"callbackTimeout": 10000}, {"callbackTimeout": 10000}),
    ({"callbackTimeout": "2000"}, {"callbackTimeout": 2000}),  # the docs send a string
    ({"callbackTimeout": 2000.0}, {"callbackTimeout": 2000}),
    ({"callbackHttpMethod": "get"}, {}),
    ({"callbackHttpMethod": "Post"}, {}),
    (
        {"callbackUrl": "https://u:p@relay.example/cb?x=1"},
        {"callbackUrl": "https://u:p@relay.example/cb?x=1"},
    ),
    (
        {"fallbackUrl": "http://relay.example:8080/fb"},
        {"fallbackUrl": "http://relay.example:8080/fb"},
    ),
    ({"tag": ""}, {"tag": ""}),
    ({"tag": "rm-\u00e9\U0001f600" * 50}, {"tag": "rm-\u00e9\U0001f600" * 50}),
    ({"tag": 42}, {"tag": "42"}),
    ({"somethingNew": {"x": 1}}, {}),  # unknown properties are ignored
]


@pytest.mark.parametrize(("changes", "expected"), ACCEPTED, ids=map(case_id, ACCEPTED))
def test_accepted_variants(sandbox, api, send, changes, expected):
    response = send(build(**changes))
    assert response.status_code == 201, response.text
    got = api.get(response.headers["Location"], timeout=5).json()
    for key, value in expected.items():
        assert got[key] == value
