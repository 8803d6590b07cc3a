"""A Catapult callback event, from its raw form to the columns the relay stores.

GET callbacks carry the event as query parameters, POST ones as a JSON object
(catapult-v1.md §3). Anything the carrier (or someone holding the credentials) sends must be
storable: values are cleaned so that no column can refuse them (no NUL characters or lone
surrogates in text, nothing longer than its column, numbers within an integer column's range);
what cannot be read is stored raw and flagged, never dropped.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from .models import CallbackEvent, utcnow

E = CallbackEvent.__table__

# Text the databases refuse: NUL (PostgreSQL text) and lone surrogates (no UTF-8 form), which
# a JSON body can spell as \u0000 or \ud800.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
INT32 = 2**31 - 1


def request_key() -> str:
    """A new key for one callback request: the time in nanoseconds then 48 random bits, in
    hex (28 characters; sortable, so its unique index grows at one end; cheap to make)."""
    return f"{time.time_ns():016x}{os.urandom(6).hex()}"


@dataclass(slots=True)
class Received:
    """One callback request as it arrived: what the database stores, or the journal keeps
    until the database can take it (and then hands back unchanged)."""

    via: str  # primary | fallback
    method: str  # GET | POST
    raw: str  # the query string (GET) or the body (POST)
    content_type: str | None = None
    user_agent: str | None = None
    received_at: datetime = field(default_factory=utcnow)
    key: str = field(default_factory=request_key)

    def fields(self) -> dict[str, Any]:
        """``receive.store_event``'s keyword arguments for this request."""
        return {
            "via": self.via,
            "method": self.method,
            "raw": self.raw,
            "content_type": self.content_type,
            "user_agent": self.user_agent,
            "received_at": self.received_at,
            "request_key": self.key,
        }


def storable(value: str) -> str:
    """``value`` with every character no database column can hold replaced by U+FFFD."""
    if value.isascii():  # the usual case, checked in C: only a NUL can be wrong there
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    return _UNSTORABLE.sub("\ufffd", value) if _UNSTORABLE.search(value) else value


def text(value: Any, limit: int | None = None) -> str | None:
    """A non-empty stripped storable string (at most ``limit`` characters), or None (objects
    and lists are not text)."""
    if value is None or isinstance(value, (dict, list)):
        return None
    value = storable(str(value).strip())
    if limit is not None:
        value = value[:limit]
    return value or None


def integer(value: Any) -> int | None:
    """``deliveryCode`` and ``segmentCount`` arrive as numbers or numeric strings; None when
    not a whole number an integer column can hold."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    if isinstance(value, int) and -INT32 - 1 <= value <= INT32:
        return value
    return None


def lower(value: Any, limit: int | None = None) -> str | None:
    value = text(value, limit)
    return value.lower() if value else None


def parse_media(value: Any) -> list[str] | None:
    """MMS media: a JSON list, one URL, or (GET callbacks) a bracketed ``[url1, url2]`` string."""
    if value is None:
        return None
    if isinstance(value, list):
        return [storable(str(v)) for v in value]
    value = storable(str(value).strip())
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def event_status(state: str | None, delivery_state: str | None) -> str | None:
    """The relay status an outbound event reports; None when it reports nothing we know."""
    if state == "error":
        return "error"
    if delivery_state == "delivered":
        return "delivered"
    if delivery_state == "not-delivered":
        return "not-delivered"
    if state == "sent":
        return "sent"
    if state in ("queued", "sending"):
        return "accepted"
    return None


def parse_raw(method: str, raw: str | None) -> dict[str, Any] | None:
    """An event's fields from its raw form: GET callbacks carry them as query parameters
    (catapult-v1.md §3; the first value of a repeated name wins), POST ones as a JSON object."""
    if not raw:
        return None
    if method == "GET":
        return dict(reversed(parse_qsl(raw, keep_blank_values=True))) or None
    try:
        value = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    return value if isinstance(value, dict) else None


def _not_json(name: str):
    """``NaN`` and ``Infinity`` are Python's extensions, not JSON: such a body is unparseable."""
    raise ValueError(f"{name} is not JSON")


def _finite(literal: str) -> float | str:
    """A number too large for a float (``1e999``) stays its own text: an infinity would make
    the API's JSON invalid wherever the payload is shown."""
    value = float(literal)
    return value if math.isfinite(value) else literal


def _limit(column: str) -> int | None:
    return getattr(E.c[column].type, "length", None)


_LIMITS = {name: _limit(name) for name in ("carrier_message_id", "event_type", "direction")}
_STATE_LIMIT = _limit("state")


def _fitting(value: str | None, column: str) -> str | None:
    """``value`` when it fits its column; None otherwise (a cut value would mean something
    else)."""
    return value if value is None or len(value) <= _LIMITS[column] else None


def event_columns(payload: Any) -> dict[str, Any]:
    """The indexed columns of an event taken from its payload; ``unparseable`` when it is not
    an object or names neither a message id nor a tag.

    A ``messageId`` longer than its column is no carrier id (they are 25 characters,
    catapult-v1.md §1), nor is a longer ``direction`` "in" or "out"; a state longer than its
    column is kept shortened (still an unknown state)."""
    if not isinstance(payload, dict):
        return {"unparseable": True}
    columns = {
        "carrier_message_id": _fitting(text(payload.get("messageId")), "carrier_message_id"),
        "tag": text(payload.get("tag")),
        "event_type": _fitting(text(payload.get("eventType")), "event_type"),
        "direction": _fitting(lower(payload.get("direction")), "direction"),
        "state": lower(payload.get("state"), _STATE_LIMIT),
        "delivery_state": lower(payload.get("deliveryState"), _STATE_LIMIT),
        "delivery_code": integer(payload.get("deliveryCode")),
    }
    columns["unparseable"] = columns["carrier_message_id"] is None and columns["tag"] is None
    return columns
