"""Validation of one message object of ``POST /v1/users/{userId}/messages`` (catapult-v1.md 1)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import errors

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
SHORT_CODE = re.compile(r"[0-9]{5,6}")  # US/CA short codes are 5 or 6 digits
MAX_TEXT = 2048
MAX_CALLBACK_TIMEOUT = 10000
DEFAULT_CALLBACK_TIMEOUT = 10000
RECEIPT_VALUES = ("none", "all", "error")
METHOD_VALUES = ("GET", "POST")


@dataclass(frozen=True)
class SendRequest:
    """A validated message object, with defaults applied."""

    from_: str
    to: str
    text: str | None
    media: tuple[str, ...]
    receipt_requested: str
    callback_url: str | None
    callback_http_method: str
    callback_timeout: int
    fallback_url: str | None
    tag: str | None

    @property
    def is_mms(self) -> bool:
        """MMS when media is attached."""
        return bool(self.media)


def validate_message(obj: Any) -> SendRequest:
    """Check one message object in the documented field order; raise the first CatapultError."""
    if not isinstance(obj, dict):
        raise errors.bad_parameters("a message must be a JSON object")
    # The v1 python SDK sends every optional key with null: null means absent.
    from_ = _phone(obj.get("from"), "from", short_code=False)
    to = _phone(obj.get("to"), "to", short_code=True)
    media = _media(obj.get("media"))
    text = _text(obj.get("text"), has_media=bool(media))
    receipt = obj.get("receiptRequested")
    if receipt is not None:
        if receipt not in RECEIPT_VALUES:
            raise errors.not_one_of("receiptRequested", RECEIPT_VALUES)
        if media:
            # "Can not send media and receiptRequested in the same request" (no DLRs for MMS).
            raise errors.bad_request(
                "validation-error",
                "The 'message' resource properties 'media' and 'receiptRequested' cannot be sent "
                "in the same request",
            )
    callback_url = _callback_url(obj.get("callbackUrl"))
    method = obj.get("callbackHttpMethod")
    if method is not None:
        # Sources use both "get"/"post" and "GET"/"POST": any case is accepted.
        if not isinstance(method, str) or method.upper() not in METHOD_VALUES:
            raise errors.not_one_of("callbackHttpMethod", METHOD_VALUES)
        method = method.upper()
    timeout = _timeout(obj.get("callbackTimeout"))
    fallback_url = _callback_url(obj.get("fallbackUrl"))
    tag = _scalar_text(obj.get("tag"), "tag")
    return SendRequest(
        from_=from_,
        to=to,
        text=text,
        media=media,
        receipt_requested=receipt or "none",
        callback_url=callback_url,
        callback_http_method=method or "POST",
        callback_timeout=timeout or DEFAULT_CALLBACK_TIMEOUT,
        fallback_url=fallback_url,
        tag=tag,
    )


def _phone(value: Any, name: str, *, short_code: bool) -> str:
    """``from`` is E.164; ``to`` is E.164 or a US/CA short code."""
    if value is None:
        raise errors.missing_property(name)
    if not isinstance(value, str):
        raise errors.invalid_phone_number()
    if not value.strip():
        raise errors.blank_property(name)
    if E164.fullmatch(value) or (short_code and SHORT_CODE.fullmatch(value)):
        return value
    raise errors.invalid_phone_number()


def _scalar_text(value: Any, name: str) -> str | None:
    """A string property; JSON numbers are taken as their text (as a Java backend coerces)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise errors.bad_parameters(f"'{name}' must be a string")


def _text(value: Any, *, has_media: bool) -> str | None:
    """Required unless media is present; at most 2048 characters."""
    text = _scalar_text(value, "text")
    if text is None:
        if has_media:
            return None
        raise errors.missing_property("text")
    if len(text) > MAX_TEXT:
        raise errors.exceeds_limit("text", MAX_TEXT)
    if not text.strip() and not has_media:
        raise errors.blank_property("text")
    return text


def is_http_url(value: Any) -> bool:
    """An absolute http(s) URL with a host and no whitespace."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _media(value: Any) -> tuple[str, ...]:
    """A URL or a list of URLs (both shapes are sent by real SDKs)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise errors.bad_parameters("'media' must be a URL or a list of URLs")
    for item in items:
        if isinstance(item, str) and not item.strip():
            raise errors.blank_property("media")
        if not is_http_url(item):
            raise errors.invalid_url("media", item)
    return tuple(items)


def _callback_url(value: Any) -> str | None:
    """callbackUrl / fallbackUrl: absolute http(s); user-info (Basic credentials) allowed."""
    if value is None:
        return None
    if not is_http_url(value):
        raise errors.callback_invalid_url(value)
    return value


def _timeout(value: Any) -> int | None:
    """Milliseconds 1..10000, as a number or a numeric string (both are sent by real clients)."""
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        number = int(value)
    if number is None:
        raise errors.bad_request(
            "validation-error",
            "The 'message' resource property 'callbackTimeout' must be a number of milliseconds",
        )
    if number < 1:
        raise errors.not_greater("callbackTimeout", 0)
    if number > MAX_CALLBACK_TIMEOUT:
        raise errors.exceeds_limit("callbackTimeout", MAX_CALLBACK_TIMEOUT)
    return number
