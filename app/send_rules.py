"""The send rules of ``POST /api/messages``: Catapult v1's message contract plus the relay's own.

Pure (no Flask, no database): the API, the dispatcher and the tests call the same functions.
Facts cited from ``shared/catapult-v1.md`` §1. Decisions of the relay:

- JSON ``null`` means absent for every key, unknown ones included (the v1 python SDK sends every
  optional key as ``null``), so ``receiptRequested: null`` with ``media`` is fine.
- ``media`` with any non-null ``receiptRequested``, even ``"none"``, is refused: the contract says
  the two must not both be sent, and the relay does not guess which one the client meant.
- ``callbackUrl``/``fallbackUrl`` are refused: the relay sets its own to record every event.
- Text is kept verbatim; empty or whitespace-only text is allowed only next to ``media``.
- One object reports its first broken rule, in this order: not an object; refused keys, then
  unknown keys (request order); then ``from``, ``to``, ``text``, ``media``, ``receiptRequested``,
  ``callbackHttpMethod``, ``callbackTimeout``, ``tag``. The two cross-field rules rank as ``text``
  (text required without media) and ``receiptRequested`` (no receipts for MMS).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validates_schema

from .errors import ApiError

MAX_BATCH = 50  # a multi-send carries at most 50 objects; more is 403 multi-message-limit
MAX_TEXT = 2048  # characters per message text
MIN_CALLBACK_TIMEOUT, MAX_CALLBACK_TIMEOUT = 1, 10000  # milliseconds

FIELD_ORDER = (
    "from",
    "to",
    "text",
    "media",
    "receiptRequested",
    "callbackHttpMethod",
    "callbackTimeout",
    "tag",
)
REFUSED = ("callbackUrl", "fallbackUrl")
RECEIPT_VALUES = ("none", "all", "error")
CALLBACK_METHODS = ("GET", "POST")


# --- the rules as regular expressions -------------------------------------------------------
# Each is the validator's own rule and, anchored, the OpenAPI document's ``pattern``: written in
# the subset that Python's ``re`` and JSON Schema's regex dialect read alike (ASCII classes, no
# ``\d``/``\s``, whose Unicode readings differ), so the document cannot drift from the checks.


def _char_class(chars: str) -> str:
    """``chars`` as the inside of a character class, in ``\\uXXXX`` escapes and ranges."""
    codes = sorted(map(ord, chars))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    spell = "\\u{:04x}".format
    return "".join(spell(a) if a == b else f"{spell(a)}-{spell(b)}" for a, b in runs)


# What Python counts as white space (str.strip, str.isspace): a text of only these is blank.
WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
NO_NUL_TEXT = "[^\\u0000]*"
# Text with at least one character that is neither white space nor NUL.
NON_BLANK_TEXT = f"{NO_NUL_TEXT}[^{_char_class(chr(0) + WHITESPACE)}]{NO_NUL_TEXT}"
E164 = r"\+[1-9][0-9]{1,14}"
SHORT_CODE = r"[0-9]{5,6}"
# A number of milliseconds as a string (the docs send "2000"): digits, a sign, ASCII blanks.
INTEGER_STRING = r"[ \t\r\n]*[+-]?[0-9]+[ \t\r\n]*"
TIMEOUT_STRING = r"[ \t\r\n]*\+?0*(?:[1-9][0-9]{0,3}|10000)[ \t\r\n]*"  # 1..10000 of those
RECEIPT_PATTERN = r"[Nn][Oo][Nn][Ee]|[Aa][Ll][Ll]|[Ee][Rr][Rr][Oo][Rr]"
METHOD_PATTERN = r"[Gg][Ee][Tt]|[Pp][Oo][Ss][Tt]"
# Bandwidth-hosted and external media are both plain http(s) URLs in ASCII (RFC 3986: anything
# else percent-encoded), with a host name, an IPv4 or an IPv6 literal (loopback hosts such as
# the sandbox's have no dot) and a port that fits in 16 bits, as the carrier checks it.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(?:[0-5]?[0-9]{1,4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
MEDIA_URL = (
    r"[Hh][Tt][Tt][Pp][Ss]?://"
    r"(?:(?:[A-Za-z0-9._~!$&'()*+,;=:-]|%[0-9A-Fa-f]{2})*@)?"
    rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])"
    rf"(?::{_PORT})?"
    r"(?:[/?#][!-~]*)?"
)
# Text no database column can hold: NUL (PostgreSQL refuses it) and unpaired surrogates (no
# UTF-8 form), which a JSON body can spell as \u0000 or \ud800. Refused in text and tag.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

_E164 = re.compile(E164)
_SHORT_CODE = re.compile(SHORT_CODE)
_INTEGER_STRING = re.compile(INTEGER_STRING)
_MEDIA_URL = re.compile(MEDIA_URL)
_ABSENT = object()


def anchored(pattern: str) -> str:
    """``pattern`` as a JSON Schema ``pattern`` (a search there): the whole value must match."""
    return f"^(?:{pattern})$"


class SendRuleError(ApiError):
    """A broken send rule, in Catapult's error shape ``{category, code, message, details}``."""

    def __init__(
        self,
        status: int,
        category: str,
        code: str,
        message: str,
        details: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(status, category, code, message, details)


# --- messages -------------------------------------------------------------------------------


def _prop(name: str) -> str:
    """Catapult's way of naming a property in its messages."""
    return f"The 'message' resource property '{name}'"


def _required_message(name: str) -> str:
    """Catapult's missing-property message."""
    return f"{_prop(name)} is required"


def _blank_message(name: str) -> str:
    """Catapult's blank-property message."""
    return f"{_prop(name)} must contain at least one non-whitespace character"


def _one_of_message(name: str, values: tuple[str, ...]) -> str:
    """Catapult's "must be one of the following values" message."""
    listed = ", ".join(f"'{value}'" for value in values)
    return f"{_prop(name)} must be one of the following values: {listed}"


def _problem(code: str, message: str, value: Any = _ABSENT) -> dict[str, Any]:
    """A marshmallow error message carrying the Catapult code (marshmallow keeps dicts as-is)."""
    problem: dict[str, Any] = {"code": code, "message": message}
    if value is not _ABSENT:
        problem["value"] = value
    return problem


def _fail(
    code: str, message: str, value: Any = _ABSENT, field: str | None = None
) -> ValidationError:
    """A ValidationError whose message is a single problem dict."""
    if field is None:
        return ValidationError(_problem(code, message, value))
    return ValidationError(_problem(code, message, value), field_name=field)


def _invalid(message: str, value: Any = _ABSENT) -> ValidationError:
    """A validation-error problem."""
    return _fail("validation-error", message, value)


# --- fields: each raises at most one problem dict, never through ``validate=`` ---------------
# (marshmallow's validator chain would splice a dict message into a list of its keys).


class _Phone(fields.Field):
    """An E.164 number, or also a US/CA short code for ``to``."""

    def __init__(self, name: str, *, short_code: bool) -> None:
        required = _problem("missing-property", _required_message(name))
        super().__init__(required=True, error_messages={"required": required})
        self.prop = name
        self.short_code = short_code
        expected = "E.164 such as +19195551212"
        if short_code:
            expected += " or a 5-6 digit US/CA short code"
        self.invalid_message = f"Invalid phone number in property '{name}': expected {expected}"

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, str) and not value.strip():
            raise _fail("blank-property", _blank_message(self.prop))
        if not isinstance(value, str) or not self._matches(value):
            raise _invalid(self.invalid_message)
        return value

    def _matches(self, value: str) -> bool:
        """True for E.164 (and short codes where allowed)."""
        if _E164.fullmatch(value):
            return True
        return self.short_code and _SHORT_CODE.fullmatch(value) is not None


class _Text(fields.Field):
    """Message text; whether it is required depends on ``media`` (a schema rule)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise _invalid(f"{_prop('text')} must be a string")
        if _UNSTORABLE.search(value):
            raise _invalid(_unstorable_message("text"))
        if len(value) > MAX_TEXT:
            raise _invalid(
                f"{_prop('text')} exceeds the limit of {MAX_TEXT} characters (it has {len(value)})"
            )
        return value


class _Media(fields.Field):
    """A URL or a non-empty list of URLs (real SDKs send both shapes); always loads a list."""

    message = "Invalid media URL in property 'media': expected an absolute http(s) URL or a list"

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        urls = [value] if isinstance(value, str) else value
        if not isinstance(urls, list):
            raise _invalid(self.message)
        if not urls:
            raise _invalid("Invalid media URL list in property 'media': it holds no URL")
        for url in urls:
            if not isinstance(url, str) or not _is_media_url(url):
                raise _invalid(self.message, url)
        return list(urls)


def _is_media_url(url: str) -> bool:
    """True for an absolute http(s) URL (``MEDIA_URL``)."""
    return _MEDIA_URL.fullmatch(url) is not None


class _Tag(fields.Field):
    """The user's own tag: any string the database can hold (no documented maximum)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise _invalid(f"{_prop('tag')} must be a string")
        if _UNSTORABLE.search(value):
            raise _invalid(_unstorable_message("tag"))
        return value


def _unstorable_message(name: str) -> str:
    return f"{_prop(name)} must not contain NUL characters or unpaired surrogates"


class _Choice(fields.Field):
    """A string out of a few values, matched in any (ASCII) case and folded to one case.

    ASCII only: ``str.upper`` folds look-alikes too ("poſt" and "poﬆ" are "POST" to it)."""

    def __init__(self, name: str, values: tuple[str, ...], fold: Callable[[str], str]) -> None:
        super().__init__()
        self.values = values
        self.fold = fold
        self.message = _one_of_message(name, values)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str) or not value.isascii() or self.fold(value) not in self.values:
            raise _invalid(self.message)
        return self.fold(value)


class _Timeout(fields.Field):
    """Milliseconds as an integral JSON number or a numeric string (the docs send ``"2000"``)."""

    invalid = f"{_prop('callbackTimeout')} must be an integer number of milliseconds"
    out_of_range = (
        f"{_prop('callbackTimeout')} must be between "
        f"{MIN_CALLBACK_TIMEOUT} and {MAX_CALLBACK_TIMEOUT}"
    )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        number = _as_integer(value)
        if number is None:
            raise _invalid(self.invalid)
        if not MIN_CALLBACK_TIMEOUT <= number <= MAX_CALLBACK_TIMEOUT:
            raise _invalid(self.out_of_range)
        return number


def _as_integer(value: Any) -> int | None:
    """An int from an int, an integral float or an integer string; None otherwise."""
    if isinstance(value, bool):  # bool is an int subclass, but JSON true is not a number
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and _INTEGER_STRING.fullmatch(value):
        try:
            return int(value.strip(" \t\r\n"))
        except ValueError:  # more digits than Python converts: no plausible timeout anyway
            return None
    return None


class _Refused(fields.Field):
    """A carrier property the relay owns: any non-null value is refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> None:
        raise _invalid(
            f"Property '{attr}' is not accepted: the relay sets its own callbackUrl and "
            "fallbackUrl so that it can record every event"
        )


# --- the schema -----------------------------------------------------------------------------


class _MessageRules(Schema):
    """Cross-field rules; the fields are added by ``from_dict`` (``from`` is a keyword)."""

    class Meta:
        unknown = RAISE  # our own API rejects unknown fields (STYLE.md §5)

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _text_unless_media(self, data: dict, original_data: dict, **kwargs: Any) -> None:
        """``text`` is required and non-blank unless ``media`` makes it an MMS."""
        if "media" in original_data:  # an invalid media reports its own error
            return
        if "text" not in original_data:
            raise _fail("missing-property", _required_message("text"), field="text")
        text = data.get("text")
        if text is not None and not text.strip():
            raise _fail("blank-property", _blank_message("text"), field="text")

    @validates_schema(skip_on_field_errors=False)
    def _no_receipts_for_mms(self, data: dict, **kwargs: Any) -> None:
        """MMS cannot request receipts: ``media`` and ``receiptRequested`` not both sent."""
        # Only when both loaded, so this never lands on top of a field's own error.
        if "media" in data and "receiptRequested" in data:
            raise _fail(
                "validation-error",
                "MMS cannot request receipts: 'media' and 'receiptRequested' must not both be "
                "sent (leave receiptRequested out or null)",
                field="receiptRequested",
            )


_MESSAGE_SCHEMA: Schema = _MessageRules.from_dict(
    {
        "from": _Phone("from", short_code=False),
        "to": _Phone("to", short_code=True),
        "text": _Text(),
        "media": _Media(),
        "receiptRequested": _Choice("receiptRequested", RECEIPT_VALUES, str.lower),
        "callbackHttpMethod": _Choice("callbackHttpMethod", CALLBACK_METHODS, str.upper),
        "callbackTimeout": _Timeout(),
        "tag": _Tag(),
        **{name: _Refused() for name in REFUSED},
    },
    name="MessageSchema",
)()


# --- public API -----------------------------------------------------------------------------


def validate_message(obj: Any) -> dict[str, Any]:
    """Validate one decoded message object; return it normalized or raise SendRuleError (400)."""
    if not isinstance(obj, Mapping):
        raise _bad_request("validation-error", "Each message must be a JSON object")
    present = {key: value for key, value in obj.items() if value is not None}
    try:
        loaded = _MESSAGE_SCHEMA.load(present)
    except ValidationError as err:
        raise _first_error(err.messages, present) from None
    return {name: loaded.get(name) for name in FIELD_ORDER}


def validate_batch(body: Any) -> list[dict[str, Any] | SendRuleError]:
    """Validate a multi-send array; per item, the normalized dict or its SendRuleError."""
    if not isinstance(body, list):
        raise _bad_request("validation-error", "A batch must be a JSON array of message objects")
    if len(body) > MAX_BATCH:
        # The carrier answers 403 limit/multi-message-limit (catapult-v1.md §1): so does the relay.
        raise SendRuleError(
            403,
            "limit",
            "multi-message-limit",
            f"A request can send at most {MAX_BATCH} messages; this one has {len(body)}",
            [
                {"name": "limit", "value": str(MAX_BATCH)},
                {"name": "count", "value": str(len(body))},
            ],
        )
    if not body:
        raise _bad_request("validation-error", "A batch must hold at least one message")
    return [_validate_item(item) for item in body]


# --- helpers --------------------------------------------------------------------------------


def _validate_item(item: Any) -> dict[str, Any] | SendRuleError:
    """One batch item: its normalized dict, or the error it gets in the 202 answer."""
    try:
        return validate_message(item)
    except SendRuleError as err:
        return err


def _bad_request(
    code: str, message: str, details: list[dict[str, str]] | None = None
) -> SendRuleError:
    """A 400 bad-request SendRuleError."""
    return SendRuleError(400, "bad-request", code, message, details)


def _first_error(messages: Any, present: dict[str, Any]) -> SendRuleError:
    """The first broken rule, in the documented order, as a SendRuleError."""
    keys = list(present)
    name = min(messages, key=lambda key: _rank(key, keys))
    problem = messages[name]
    if not (isinstance(problem, dict) and "code" in problem):
        # Only marshmallow's own "Unknown field." lands here: every declared field raises dicts.
        problem = _problem("validation-error", f"Unknown property '{name}'")
    value = problem.get("value", present.get(name, _ABSENT))
    return _bad_request(problem["code"], problem["message"], [_detail(name, value)])


def _rank(key: str, keys: list[str]) -> tuple[int, int]:
    """Sort key: refused, then unknown (both in request order), then the declared fields."""
    position = keys.index(key) if key in keys else len(keys)
    if key in REFUSED:
        return (0, position)
    if key not in FIELD_ORDER:
        return (1, position)
    return (2, FIELD_ORDER.index(key))


def _detail(name: str, value: Any) -> dict[str, str]:
    """A ``{name, value}`` detail; the value as a string ("" when the property is absent)."""
    if value is _ABSENT:
        text = ""
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = str(value)
    # An echo of the request, which may hold what no column can: stored with the answer of an
    # Idempotency-Key, so made storable here.
    return {"name": _storable(name), "value": _storable(text)}


def _storable(text: str) -> str:
    return _UNSTORABLE.sub("\ufffd", text)
