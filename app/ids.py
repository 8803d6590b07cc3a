"""Relay ids: ``rm-`` + a time-sortable unique suffix (never ``m-``, the carrier's prefix)."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


_lock = threading.Lock()
_last = 0


def new_id(prefix: str = "rm-") -> str:
    """A ULID-like id: 48 bits of milliseconds then 80 random bits, so ids sort by creation.
    Within one millisecond of one process the value is incremented, so ids stay monotonic."""
    global _last
    with _lock:
        value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
        if value <= _last:
            value = _last + 1
        _last = value
    return _encode(value, prefix)


def _encode(value: int, prefix: str) -> str:
    return prefix + "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


def id_floor(when, prefix: str = "rm-") -> str:
    """The smallest relay id minted at ``when`` (ids begin with 48 bits of milliseconds), so a
    time bound becomes an id bound that the (filter, id) indexes can seek to."""
    return _encode(int(when.timestamp() * 1000) << 80, prefix)


def is_carrier_id(value: str) -> bool:
    """Carrier message ids start with ``m-`` (catapult-v1.md §1); relay ids never do."""
    return value.startswith("m-")
