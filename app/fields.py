"""Strict marshmallow fields for the API's query strings, each documented exactly as it checks.

marshmallow's own fields read more than the OpenAPI document can say: ``Integer`` takes
``int()``'s forms ("٣", "1_0"), ``Boolean`` a dozen spellings ("y", "on", "1"), ``DateTime``
whatever ``datetime.fromisoformat`` reads ("20260101"), ``String`` a NUL that PostgreSQL
refuses to compare. These take only what their ``type``/``format``/``pattern`` say.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from marshmallow import fields

from .send_rules import anchored

# Bounds a time filter is read within: no message predates 1970, and a later bound than 9000
# selects the same rows as this one, without overflowing the arithmetic done on it.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

# RFC 3339 ``date-time`` (JSON Schema's ``format: date-time``): an offset is required.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


class Digits(fields.Integer):
    """A whole number spelled in ASCII digits only (documented ``type: integer``)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class QueryBoolean(fields.Boolean):
    """``true`` or ``false``, as the document's ``type: boolean`` is written in a query."""

    def __init__(self, **kwargs):
        super().__init__(truthy={"true"}, falsy={"false"}, **kwargs)


class Timestamp(fields.DateTime):
    """An RFC 3339 date-time with its offset (``format: date-time``), read as UTC; a time
    outside 1970-9000 is read as that bound (a filter selects the same rows either way)."""

    def __init__(self, **kwargs):
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        found = _RFC3339.fullmatch(value) if isinstance(value, str) else None
        if found is None:
            raise self.make_error("invalid", input=value, obj_type="datetime")
        year, month, day, hour, minute, second = (int(found[i]) for i in range(1, 7))
        micro = int((found[7] or ".0")[1:].ljust(6, "0")[:6])
        sign = -1 if found[9] == "-" else 1
        offset = sign * timedelta(hours=int(found[10] or 0), minutes=int(found[11] or 0))
        # RFC 3339 has a leap second only at 23:59:60 UTC; it is read as the minute's last
        # microsecond. Year 0000 is valid there (its calendar is that of 2000).
        utc_minute = (hour * 60 + minute - offset // timedelta(minutes=1)) % 1440
        bad_offset = int(found[10] or 0) > 23 or int(found[11] or 0) > 59
        if bad_offset or (second == 60 and utc_minute != 1439):
            raise self.make_error("invalid", input=value, obj_type="datetime")
        try:
            local = datetime(year or 2000, month, day, hour, minute, min(second, 59), micro)
        except ValueError:  # no such day, hour, minute
            raise self.make_error("invalid", input=value, obj_type="datetime") from None
        if second == 60:
            local = local.replace(microsecond=999999)
        if year == 0:
            return EARLIEST
        try:
            when = local.replace(tzinfo=timezone(offset)).astimezone(UTC)
        except OverflowError:  # the first or last hours of years 1 and 9999
            return EARLIEST if year < 5000 else LATEST
        return min(max(when, EARLIEST), LATEST)


class Matching(fields.String):
    """A string that fully matches ``pattern``, which the document shows as its ``pattern``."""

    default_error_messages = {"mismatch": "Not a valid value: it must match {pattern}."}

    def __init__(self, pattern: str, *, metadata: dict | None = None, **kwargs):
        self.regex = re.compile(pattern)
        metadata = {"pattern": anchored(pattern), **(metadata or {})}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if self.regex.fullmatch(value) is None:
            raise self.make_error("mismatch", pattern=self.metadata["pattern"])
        return value


def query_text(**kwargs) -> Matching:
    """Any text but NUL, which no stored value holds (PostgreSQL cannot compare it)."""
    return Matching("[^\\u0000]*", **kwargs)
