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
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return prefix + "".join(reversed(chars))


def is_carrier_id(value: str) -> bool:
    """Carrier message ids start with ``m-`` (catapult-v1.md §1); relay ids never do."""
    return value.startswith("m-")
