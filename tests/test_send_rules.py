"""The send rules matrix: every rule of app/send_rules.py, valid and invalid, single and batch."""

from __future__ import annotations

import copy

import pytest

from app.send_rules import (
    MAX_BATCH,
    MAX_TEXT,
    SendRuleError,
    validate_batch,
    validate_message,
)

DROP = object()  # marks a key to remove from the base message
SENDER = "+19195551212"
RECIPIENT = "+13865245000"
IMAGE = "https://media.example.com/cat.png"
KEYS = {
    "from",
    "to",
    "text",
    "media",
    "receiptRequested",
    "callbackHttpMethod",
    "callbackTimeout",
    "tag",
}
MMS_RECEIPT = "MMS cannot request receipts"


def sms(**changes: object) -> dict:
    """A valid SMS with ``changes`` applied (``from_`` stands for ``from``; DROP removes a key)."""
    message: dict = {"from": SENDER, "to": RECIPIENT, "text": "Hello"}
    for key, value in changes.items():
        key = "from" if key == "from_" else key
        if value is DROP:
            message.pop(key, None)
        else:
            message[key] = value
    return message


def mms(**changes: object) -> dict:
    """A valid MMS (media, no text) with ``changes`` applied."""
    return sms(**{"text": DROP, "media": IMAGE, **changes})


def rejected(obj: object) -> SendRuleError:
    """The SendRuleError validate_message raises for ``obj``."""
    with pytest.raises(SendRuleError) as caught:
        validate_message(obj)
    return caught.value


def assert_bad_request(err: SendRuleError, code: str, field: str | None, *fragments: str) -> None:
    """A 400 bad-request with ``code``, naming ``field`` in the message and the details."""
    assert (err.status, err.category, err.code) == (400, "bad-request", code), err.to_dict()
    for fragment in fragments:
        assert fragment in err.message, err.message
    if field is not None:
        assert f"'{field}'" in err.message, err.message
        assert err.details and err.details[0]["name"] == field, err.details
        assert isinstance(err.details[0]["value"], str)


# --- invalid single messages: (message, code, field, message fragment) ------------------------

PHONE_INVALID = [
    19195551212,
    True,
    1.5,
    [SENDER],
    {"number": SENDER},
    "19195551212",  # no plus
    "+0195551212",  # country code cannot start with 0
    "+1",  # fewer than 2 digits
    "+1234567890123456",  # 16 digits: over E.164's 15
    "+1919-555-1212",
    "+1 9195551212",
    " +19195551212",
    "+19195551212\n",  # a trailing newline must not pass as end-of-string
    "+19195551212x",
    "+\u0661\u0669\u0661\u0669\u0665\u0665\u0665",  # non-ASCII (Arabic-Indic) digits
    "+",
]

INVALID = [
    # from
    *[
        pytest.param(sms(from_=DROP), "missing-property", "from", "is required", id="from-missing"),
        pytest.param(sms(from_=None), "missing-property", "from", "is required", id="from-null"),
        pytest.param(sms(from_=""), "blank-property", "from", "non-whitespace", id="from-empty"),
        pytest.param(sms(from_="  \t"), "blank-property", "from", "non-whitespace", id="from-ws"),
        pytest.param(
            sms(from_="12345"), "validation-error", "from", "Invalid phone number", id="from-short"
        ),
    ],
    *[
        pytest.param(
            sms(from_=value), "validation-error", "from", "Invalid phone number", id=f"from-{i}"
        )
        for i, value in enumerate(PHONE_INVALID)
    ],
    # to
    pytest.param(sms(to=DROP), "missing-property", "to", "is required", id="to-missing"),
    pytest.param(sms(to=None), "missing-property", "to", "is required", id="to-null"),
    pytest.param(sms(to=""), "blank-property", "to", "non-whitespace", id="to-empty"),
    pytest.param(sms(to=" "), "blank-property", "to", "non-whitespace", id="to-ws"),
    *[
        pytest.param(sms(to=value), "validation-error", "to", "Invalid phone number", id=f"to-{i}")
        for i, value in enumerate(
            [*PHONE_INVALID, "1234", "1234567", 12345, "12345\n", "abcde", "+12345 "]
        )
    ],
    # text
    pytest.param(sms(text=DROP), "missing-property", "text", "is required", id="text-missing"),
    pytest.param(sms(text=None), "missing-property", "text", "is required", id="text-null"),
    pytest.param(sms(text=""), "blank-property", "text", "non-whitespace", id="text-empty"),
    pytest.param(sms(text=" \n\t"), "blank-property", "text", "non-whitespace", id="text-ws"),
    pytest.param(sms(text=5), "validation-error", "text", "must be a string", id="text-int"),
    pytest.param(sms(text=True), "validation-error", "text", "must be a string", id="text-bool"),
    pytest.param(sms(text=["a"]), "validation-error", "text", "must be a string", id="text-list"),
    pytest.param(
        sms(text="x" * (MAX_TEXT + 1)),
        "validation-error",
        "text",
        "exceeds the limit of 2048",
        id="text-2049",
    ),
    pytest.param(
        mms(text="x" * (MAX_TEXT + 1)),
        "validation-error",
        "text",
        "exceeds the limit of 2048",
        id="text-2049-mms",
    ),
    pytest.param(
        mms(text=7), "validation-error", "text", "must be a string", id="text-int-with-media"
    ),
    # media
    *[
        pytest.param(
            mms(media=value), "validation-error", "media", "Invalid media URL", id=f"media-{i}"
        )
        for i, value in enumerate(
            [
                [],
                5,
                True,
                {"url": IMAGE},
                [IMAGE, 5],
                [None],
                [[IMAGE]],
                "",
                "not a url",
                "ftp://media.example.com/a.png",
                "/relative/a.png",
                "//media.example.com/a.png",
                "http://",
                "mailto:someone@example.com",
                "javascript:alert(1)",
                "https://exa mple.com/a.png",
                [IMAGE, "file:///etc/passwd"],
                IMAGE + "\n",
            ]
        )
    ],
    # receiptRequested
    *[
        pytest.param(
            sms(receiptRequested=value),
            "validation-error",
            "receiptRequested",
            "must be one of the following values: 'none', 'all', 'error'",
            id=f"receipt-{i}",
        )
        for i, value in enumerate(["yes", "", "al l", "nonee", " all", 1, True, ["all"]])
    ],
    *[
        pytest.param(
            mms(receiptRequested=value, text=text),
            "validation-error",
            "receiptRequested",
            MMS_RECEIPT,
            id=f"receipt-with-media-{value}-{text}",
        )
        for value in ["none", "all", "error", "ALL"]
        for text in [DROP, "caption"]
    ],
    # callbackHttpMethod
    *[
        pytest.param(
            sms(callbackHttpMethod=value),
            "validation-error",
            "callbackHttpMethod",
            "must be one of the following values: 'GET', 'POST'",
            id=f"method-{i}",
        )
        for i, value in enumerate(["PUT", "", "get ", "G E T", 1, True, ["GET"]])
    ],
    # callbackTimeout
    *[
        pytest.param(
            sms(callbackTimeout=value),
            "validation-error",
            "callbackTimeout",
            "must be between 1 and 10000",
            id=f"timeout-range-{value!r}",
        )
        for value in [0, -1, 10001, 1e300, "0", "10001", "-5", 0.0]
    ],
    *[
        pytest.param(
            sms(callbackTimeout=value),
            "validation-error",
            "callbackTimeout",
            "must be an integer",
            id=f"timeout-invalid-{i}",
        )
        for i, value in enumerate(
            [
                "abc",
                "",
                "2000ms",
                "20.5",
                "1e3",
                20.5,
                True,
                False,
                [2000],
                {"ms": 2000},
                float("nan"),
                float("inf"),
                "9" * 5000,
            ]
        )
    ],
    # tag
    *[
        pytest.param(
            sms(tag=value), "validation-error", "tag", "must be a string", id=f"tag-{value!r}"
        )
        for value in [5, 1.5, True, {"a": 1}, ["x"]]
    ],
    # callbackUrl / fallbackUrl: the relay owns them
    *[
        pytest.param(
            sms(**{name: value}),
            "validation-error",
            name,
            "the relay sets its own callbackUrl and fallbackUrl",
            id=f"{name}-{value!r}",
        )
        for name in ["callbackUrl", "fallbackUrl"]
        for value in ["https://me.example.com/cb", "", 5]
    ],
    # unknown properties
    *[
        pytest.param(
            sms(**{name: "x"}), "validation-error", name, "Unknown property", id=f"unknown-{name}"
        )
        for name in ["foo", "To", "receiptrequested", "messageId", "_schema", ""]
    ],
]


@pytest.mark.parametrize(("message", "code", "field", "fragment"), INVALID)
def test_invalid_message(message: dict, code: str, field: str, fragment: str) -> None:
    """Every broken rule answers 400 bad-request with its code, naming the field."""
    err = rejected(message)
    assert_bad_request(err, code, field, fragment)
    assert err.to_dict() == {
        "category": "bad-request",
        "code": code,
        "message": err.message,
        "details": err.details,
    }


@pytest.mark.parametrize(
    "obj", [[], [sms()], "text", 5, 1.5, True, None], ids=lambda o: type(o).__name__
)
def test_not_an_object(obj: object) -> None:
    """A message that is not a JSON object is a validation-error without details."""
    err = rejected(obj)
    assert_bad_request(err, "validation-error", None, "Each message must be a JSON object")
    assert err.details == []


# --- details ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        (sms(from_=DROP), {"name": "from", "value": ""}),
        (sms(from_=None), {"name": "from", "value": ""}),
        (sms(to="1234"), {"name": "to", "value": "1234"}),
        (sms(tag=5), {"name": "tag", "value": "5"}),
        (sms(callbackTimeout=True), {"name": "callbackTimeout", "value": "true"}),
        (sms(callbackTimeout="20001"), {"name": "callbackTimeout", "value": "20001"}),
        (
            mms(media=[IMAGE, "ftp://x.example.com/a"]),
            {"name": "media", "value": "ftp://x.example.com/a"},
        ),
        (mms(media=[]), {"name": "media", "value": "[]"}),
        (mms(receiptRequested="all"), {"name": "receiptRequested", "value": "all"}),
        (
            sms(fallbackUrl="https://x.example.com"),
            {"name": "fallbackUrl", "value": "https://x.example.com"},
        ),
        (sms(extra={"a": 1}), {"name": "extra", "value": '{"a": 1}'}),
    ],
)
def test_details_carry_the_offending_value(message: dict, detail: dict) -> None:
    """The one detail names the field and gives the offending value as a string."""
    assert rejected(message).details == [detail]


# --- the order of rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "field", "code"),
    [
        ({"foo": 1, "callbackUrl": "x"}, "callbackUrl", "validation-error"),
        ({"fallbackUrl": "x", "callbackUrl": "x"}, "fallbackUrl", "validation-error"),
        ({"b": 1, "a": 1, "from": 5}, "b", "validation-error"),
        ({"a": 1, "b": 1}, "a", "validation-error"),
        ({"to": 5, "text": 5}, "from", "missing-property"),
        (sms(from_="", to=""), "from", "blank-property"),
        (sms(to="", text=""), "to", "blank-property"),
        (sms(text=DROP, callbackTimeout=0), "text", "missing-property"),
        (sms(text=" ", tag=5), "text", "blank-property"),
        (sms(text=5, media=5), "text", "validation-error"),
        (mms(media="bad"), "media", "validation-error"),  # not "text is required"
        (mms(media="bad", receiptRequested="all"), "media", "validation-error"),
        (sms(receiptRequested="x", callbackHttpMethod="x"), "receiptRequested", "validation-error"),
        (
            sms(callbackHttpMethod="x", callbackTimeout="x"),
            "callbackHttpMethod",
            "validation-error",
        ),
        (sms(callbackTimeout="x", tag=5), "callbackTimeout", "validation-error"),
        (mms(receiptRequested="all", callbackTimeout=0), "receiptRequested", "validation-error"),
        (mms(receiptRequested="all", tag=5), "receiptRequested", "validation-error"),
    ],
)
def test_first_broken_rule_wins_in_a_fixed_order(message: dict, field: str, code: str) -> None:
    """Refused, unknown (request order), from, to, text, media, receipts, method, timeout, tag."""
    err = rejected(message)
    assert (err.code, err.details[0]["name"]) == (code, field), err.to_dict()


def test_receipt_choice_error_beats_the_mms_rule() -> None:
    """An unknown receiptRequested value with media says which values exist, not the MMS rule."""
    err = rejected(mms(receiptRequested="sometimes"))
    assert "must be one of the following values" in err.message
    assert MMS_RECEIPT not in err.message


# --- valid messages and their normalization ---------------------------------------------------


def expected(**changes: object) -> dict:
    """The normalized dict of ``sms()`` with ``changes`` (``from_`` stands for ``from``)."""
    result: dict = dict.fromkeys(KEYS)
    result.update({"from": SENDER, "to": RECIPIENT, "text": "Hello"})
    for key, value in changes.items():
        result["from" if key == "from_" else key] = value
    return result


VALID = [
    pytest.param(sms(), expected(), id="minimal-sms"),
    pytest.param(sms(to="12345"), expected(to="12345"), id="short-code-5"),
    pytest.param(sms(to="123456"), expected(to="123456"), id="short-code-6"),
    pytest.param(sms(to="+12"), expected(to="+12"), id="e164-2-digits"),
    pytest.param(
        sms(from_="+123456789012345"), expected(from_="+123456789012345"), id="e164-15-digits"
    ),
    pytest.param(sms(text="x" * MAX_TEXT), expected(text="x" * MAX_TEXT), id="text-2048"),
    pytest.param(
        sms(text="\U0001f600" * MAX_TEXT), expected(text="\U0001f600" * MAX_TEXT), id="emoji-2048"
    ),
    pytest.param(sms(text=" padded "), expected(text=" padded "), id="text-verbatim"),
    pytest.param(mms(), expected(text=None, media=[IMAGE]), id="media-string-to-list"),
    pytest.param(
        mms(media=[IMAGE, "http://other.example.org/b.jpg"]),
        expected(text=None, media=[IMAGE, "http://other.example.org/b.jpg"]),
        id="media-list",
    ),
    pytest.param(mms(text=""), expected(text="", media=[IMAGE]), id="media-empty-text"),
    pytest.param(mms(text="  "), expected(text="  ", media=[IMAGE]), id="media-blank-text"),
    pytest.param(mms(text="Look"), expected(text="Look", media=[IMAGE]), id="media-and-text"),
    *[
        pytest.param(mms(media=url), expected(text=None, media=[url]), id=f"media-url-{i}")
        for i, url in enumerate(
            [
                "HTTPS://MEDIA.EXAMPLE.COM/A.PNG",
                "http://127.0.0.1:8080/m.png",
                "http://localhost:5000/x.jpg",
                "https://user:pass@media.example.com/a.gif?size=1#top",
                "https://api.catapult.inetwork.com/v1/users/u-1/media/cat.png",
            ]
        )
    ],
    *[
        pytest.param(sms(receiptRequested=given), expected(receiptRequested=want), id=given)
        for given, want in [("none", "none"), ("ALL", "all"), ("Error", "error"), ("aLl", "all")]
    ],
    *[
        pytest.param(sms(callbackHttpMethod=given), expected(callbackHttpMethod=want), id=given)
        for given, want in [("GET", "GET"), ("get", "GET"), ("Post", "POST"), ("post", "POST")]
    ],
    *[
        pytest.param(
            sms(callbackTimeout=given), expected(callbackTimeout=want), id=f"timeout-{given!r}"
        )
        for given, want in [
            (1, 1),
            (10000, 10000),
            ("2000", 2000),
            (2000.0, 2000),
            ("1", 1),
            ("10000", 10000),
            (" 2000 ", 2000),
            ("002000", 2000),
        ]
    ],
    *[
        pytest.param(sms(tag=tag), expected(tag=tag), id=f"tag-{i}")
        for i, tag in enumerate(["", "rm-01J0ABC", "x" * 10000, "caf\u00e9 \U0001f600", "  "])
    ],
]


@pytest.mark.parametrize(("message", "want"), VALID)
def test_valid_message(message: dict, want: dict) -> None:
    """A valid message loads to the normalized dict with every key present."""
    assert validate_message(message) == want


def test_every_field_at_once() -> None:
    """All accepted fields together, each normalized."""
    message = sms(
        receiptRequested="ERROR", callbackHttpMethod="get", callbackTimeout="2500", tag="t-1"
    )
    assert validate_message(message) == expected(
        receiptRequested="error", callbackHttpMethod="GET", callbackTimeout=2500, tag="t-1"
    )


def test_callback_timeout_is_an_int() -> None:
    """Numeric strings and integral floats become real ints, not floats or strings."""
    for given in ["2000", 2000.0]:
        assert type(validate_message(sms(callbackTimeout=given))["callbackTimeout"]) is int


def test_null_means_absent() -> None:
    """The v1 python SDK sends every optional key as null: that equals not sending it."""
    sdk_style = sms(
        media=None,
        receiptRequested=None,
        callbackUrl=None,
        callbackHttpMethod=None,
        callbackTimeout=None,
        fallbackUrl=None,
        tag=None,
    )
    assert validate_message(sdk_style) == validate_message(sms()) == expected()


def test_null_receipt_with_media_is_fine() -> None:
    """``receiptRequested: null`` is absent, so an MMS may carry it."""
    assert validate_message(mms(receiptRequested=None)) == expected(text=None, media=[IMAGE])


def test_null_text_with_media_is_fine() -> None:
    """``text: null`` on an MMS is absent text."""
    assert validate_message(mms(text=None))["text"] is None


def test_null_unknown_key_is_absent() -> None:
    """Null means absent for every key, an unknown one included."""
    assert validate_message(sms(somethingElse=None)) == expected()


def test_input_is_not_modified() -> None:
    """Validation leaves the caller's object alone."""
    message = mms(media=[IMAGE], callbackTimeout="2000", tag=None)
    before = copy.deepcopy(message)
    result = validate_message(message)
    assert message == before
    assert result["media"] is not message["media"]


# --- batches ----------------------------------------------------------------------------------


def test_limits() -> None:
    """The carrier's limits: 50 messages per request, 2048 characters of text."""
    assert (MAX_BATCH, MAX_TEXT) == (50, 2048)


@pytest.mark.parametrize("count", [MAX_BATCH + 1, 100, 1000])
def test_batch_over_the_limit_is_403(count: int) -> None:
    """More than 50 items: 403 limit/multi-message-limit, before any item is looked at."""
    with pytest.raises(SendRuleError) as caught:
        validate_batch([{}] * count)  # invalid items: the limit still wins
    err = caught.value
    assert (err.status, err.category, err.code) == (403, "limit", "multi-message-limit")
    assert "50" in err.message and str(count) in err.message
    assert err.to_dict()["code"] == "multi-message-limit"


@pytest.mark.parametrize("count", [1, 2, MAX_BATCH])
def test_batch_up_to_the_limit_is_validated(count: int) -> None:
    """Exactly 50 (or fewer) valid items all load, in order."""
    body = [sms(tag=str(i)) for i in range(count)]
    result = validate_batch(body)
    assert [item["tag"] for item in result] == [str(i) for i in range(count)]


def test_batch_empty_is_400() -> None:
    """An empty array sends nothing: 400 validation-error."""
    with pytest.raises(SendRuleError) as caught:
        validate_batch([])
    assert_bad_request(caught.value, "validation-error", None, "at least one message")


@pytest.mark.parametrize("body", [sms(), "x", None, 5], ids=lambda b: type(b).__name__)
def test_batch_must_be_a_list(body: object) -> None:
    """validate_batch takes an array only."""
    with pytest.raises(SendRuleError) as caught:
        validate_batch(body)
    assert_bad_request(caught.value, "validation-error", None, "JSON array")


def test_batch_mixes_results_and_errors_in_request_order() -> None:
    """Each item gets its own answer, in request order; one bad item does not spoil the rest."""
    body = [
        sms(tag="a"),
        sms(to=""),
        "not an object",
        mms(tag="d"),
        sms(callbackUrl="https://me.example.com/cb"),
        mms(receiptRequested="all"),
        sms(text=DROP),
        sms(tag="h", callbackHttpMethod="post"),
    ]
    result = validate_batch(body)
    assert len(result) == len(body)
    kinds = [item.code if isinstance(item, SendRuleError) else item["tag"] for item in result]
    assert kinds == [
        "a",
        "blank-property",
        "validation-error",
        "d",
        "validation-error",
        "validation-error",
        "missing-property",
        "h",
    ]
    errors = [item for item in result if isinstance(item, SendRuleError)]
    assert all((e.status, e.category) == (400, "bad-request") for e in errors)
    assert [e.details[0]["name"] if e.details else None for e in errors] == [
        "to",
        None,
        "callbackUrl",
        "receiptRequested",
        "text",
    ]
    assert result[3]["media"] == [IMAGE]
    assert result[7]["callbackHttpMethod"] == "POST"


def test_batch_item_matches_single_validation() -> None:
    """A batch item is judged exactly as the same message sent alone."""
    bad = sms(callbackTimeout="0")
    (item,) = validate_batch([bad])
    assert isinstance(item, SendRuleError)
    assert item.to_dict() == rejected(bad).to_dict()


# --- the error type ---------------------------------------------------------------------------


def test_send_rule_error_shape() -> None:
    """SendRuleError carries status and Catapult's four keys."""
    err = SendRuleError(400, "bad-request", "blank-property", "msg", [{"name": "to", "value": ""}])
    assert (err.status, err.category, err.code, err.message) == (
        400,
        "bad-request",
        "blank-property",
        "msg",
    )
    assert err.to_dict() == {
        "category": "bad-request",
        "code": "blank-property",
        "message": "msg",
        "details": [{"name": "to", "value": ""}],
    }
    assert SendRuleError(400, "bad-request", "x", "m").details == []
    assert str(err) == "msg"


# --- hostile input: what the OpenAPI document's patterns say, and nothing more --------------


@pytest.mark.parametrize(
    "message,field",
    [
        (sms(callbackHttpMethod="poſt"), "callbackHttpMethod"),  # "POST" to str.upper
        (sms(callbackHttpMethod="poﬆ"), "callbackHttpMethod"),  # the ligature ﬆ is "ST"
        (sms(callbackHttpMethod="ɢet"), "callbackHttpMethod"),
        (sms(receiptRequested="ALL\u0130"), "receiptRequested"),
        (sms(receiptRequested="\u212aall"), "receiptRequested"),  # KELVIN SIGN
        (sms(text="a\x00b"), "text"),
        (sms(text="\ud800"), "text"),
        (sms(tag="\x00"), "tag"),
        (sms(tag="ok\udfff"), "tag"),
        (mms(media="https://bücher.example/a.png"), "media"),  # IDN: send its punycode
        (mms(media="https://example.com/ü.png"), "media"),  # percent-encode the path
        (mms(media="http://example.com:65536/a.png"), "media"),
        (mms(media="http://example.com:/a.png"), "media"),
        (mms(media="https://exa_mple.com/a.png"), "media"),
        (mms(media="https://example.com/a b.png"), "media"),
        (sms(callbackTimeout="\u0662000"), "callbackTimeout"),  # Arabic-Indic digits
        (sms(callbackTimeout="1_000"), "callbackTimeout"),
        (sms(callbackTimeout="\x1c2000"), "callbackTimeout"),
    ],
)
def test_lookalikes_and_unstorable_text_are_refused(message, field) -> None:
    with pytest.raises(SendRuleError) as caught:
        validate_message(message)
    assert caught.value.status == 400
    assert caught.value.details[0]["name"] == field


@pytest.mark.parametrize(
    "message",
    [
        mms(media="http://example.com:65535/a.png"),
        mms(media="http://[::1]:8080/a.png"),
        mms(media="https://xn--bcher-kva.example/a.png?x=%C3%BC#top"),
        sms(text="\ufeffhello"),  # BOM is not white space to Python
        sms(text="x" * MAX_TEXT, tag="é🙂" * 1000),
        sms(callbackTimeout="\t+0010000\n"),
    ],
)
def test_what_the_patterns_allow_is_accepted(message) -> None:
    validate_message(message)


def test_error_details_are_storable_echoes() -> None:
    [_, error] = validate_batch([sms(), {**sms(), "x\x00\ud800": 1}])
    assert error.details == [{"name": "x\ufffd\ufffd", "value": "1"}]
