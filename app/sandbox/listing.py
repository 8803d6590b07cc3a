"""``GET /v1/users/{userId}/messages``: filters, sort order and ``sortKeyLT`` paging."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from . import errors
from .store import MessageStore, StoredMessage

DEFAULT_SIZE = 25
MAX_SIZE = 1000
DIRECTIONS = ("in", "out")
STATES = ("received", "queued", "sending", "sent", "error")
DELIVERY_STATES = ("waiting", "delivered", "not-delivered")
SORT_ORDERS = ("asc", "desc")
# yyyy-MM-dd hh:mm:ss.sss with trailing parts optional (missing parts are zeros); an ISO
# "T" separator and a trailing "Z" are accepted too (the Ruby SDK sends ISO times).
DATE_TIME = re.compile(
    r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[ T](\d{1,2})(?::(\d{1,2})(?::(\d{1,2})"
    r"(?:\.(\d{1,6}))?)?)?)?)?)?(?:Z|[+-]00:?00)?"
)


def parse_date_time(name: str, value: str) -> datetime:
    """A UTC datetime from the list endpoint's date format."""
    match = DATE_TIME.fullmatch(value.strip())
    if not match:
        raise errors.bad_request(
            "validation-error",
            f"The '{name}' parameter must be in yyyy-MM-dd hh:mm:ss.sss format "
            "(trailing parts optional)",
        )
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError:
        raise errors.bad_request(
            "validation-error", f"The '{name}' parameter is not a valid date"
        ) from None


def _choice(args: Mapping[str, str], name: str, values: tuple[str, ...]) -> str | None:
    value = args.get(name)
    if value is not None and value not in values:
        raise errors.not_one_of(name, values, resource="messages")
    return value


def _integer(args: Mapping[str, str], name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if not re.fullmatch(r"-?\d+", value.strip()):
        raise errors.bad_request("validation-error", f"The '{name}' parameter must be an integer")
    return int(value)


def _number(value: str | None) -> str | None:
    """A phone filter; an unencoded ``+`` arrives as a space, so restore it."""
    if value is not None and value.startswith(" ") and value[1:].isdigit():
        return "+" + value[1:]
    return value


def list_page(
    store: MessageStore, args: Mapping[str, str], self_url: str
) -> tuple[list[dict], str | None]:
    """One page of resources, and the absolute URL of the next page (or None)."""
    direction = _choice(args, "direction", DIRECTIONS)
    state = _choice(args, "state", STATES)
    delivery_state = _choice(args, "deliveryState", DELIVERY_STATES)
    order = _choice(args, "sortOrder", SORT_ORDERS) or "asc"
    size = _integer(args, "size")
    size = DEFAULT_SIZE if size is None else size
    if size < 1:
        raise errors.not_greater("size", 0, resource="messages")
    if size > MAX_SIZE:
        raise errors.exceeds_limit("size", MAX_SIZE, resource="messages")
    sort_key_lt = _integer(args, "sortKeyLT")
    from_ = _number(args.get("from"))
    to = _number(args.get("to"))
    since = (
        parse_date_time("fromDateTime", args["fromDateTime"]) if "fromDateTime" in args else None
    )
    until = parse_date_time("toDateTime", args["toDateTime"]) if "toDateTime" in args else None

    def match(message: StoredMessage) -> bool:
        return (
            (from_ is None or message.from_ == from_)
            and (to is None or message.to == to)
            and (direction is None or message.direction == direction)
            and (state is None or message.state == state)
            and (delivery_state is None or message.delivery_state == delivery_state)
            and (since is None or message.time >= since)
            and (until is None or message.time <= until)
        )

    # Pages are selected newest first below sortKeyLT ("the messages selected will be the
    # ones closer to the end date"), then ordered by sortOrder (default asc) within the page.
    items, next_key = store.sorted_page(match, sort_key_lt=sort_key_lt, size=size)
    items.sort(key=lambda item: item[0], reverse=order == "desc")
    resources = [resource for _, resource in items]
    if next_key is None:
        return resources, None
    params: list[tuple[str, Any]] = [
        (k, _number(v) if k in ("from", "to") else v)
        for k, v in _items(args)
        if k not in ("sortKeyLT", "size")
    ]
    params += [("sortKeyLT", next_key), ("size", size)]
    return resources, f"{self_url}?{urlencode(params, quote_via=quote, safe='')}"


def _items(args: Mapping[str, str]) -> list[tuple[str, str]]:
    """Query items in order, repeated keys kept (werkzeug MultiDict or a plain mapping)."""
    multi = getattr(args, "items", None)
    try:
        return list(multi(multi=True))  # type: ignore[misc]
    except TypeError:
        return list(args.items())
