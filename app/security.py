"""Failed authentication: counted per area and reason, and logged without the credentials.

Every area compares credentials in constant time (``hmac.compare_digest``); this module only
tells, for the metrics and the log, what kind of failure it was, from the header's shape.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import request

from .metrics import AUTH_FAILURES

log = logging.getLogger("relay.auth")

AREAS = ("api", "callbacks", "dashboard")
REASONS = ("missing", "wrong-scheme", "empty", "wrong-credentials")
# Children bound once: a failure costs one increment, not a label lookup.
_COUNTERS = {(a, r): AUTH_FAILURES.labels(a, r) for a in AREAS for r in REASONS}
# A flood of bad requests must not become a flood of log lines: at most one line per area
# per LOG_EVERY_S, which says how many it stands for (the counter has them all).
LOG_EVERY_S = 1.0
_last_logged = dict.fromkeys(AREAS, float("-inf"))
_unlogged = dict.fromkeys(AREAS, 0)
_lock = threading.Lock()


def authorization():
    """``request.authorization``, or None when the header cannot be read: werkzeug raises
    ValueError (not its own parse errors) for Basic credentials with non-ASCII characters, which
    would answer an unauthenticated request 500 instead of 401."""
    try:
        return request.authorization
    except ValueError:
        return None


def scheme_failure(header: str, scheme: str) -> str:
    """``missing``, ``wrong-scheme``, ``empty`` or ``wrong-credentials`` for the Authorization
    header of a refused request (``scheme``: the one its area expects, lower case)."""
    if not header:
        return "missing"
    given, _, rest = header.partition(" ")
    if given.lower() != scheme:
        return "wrong-scheme"
    return "empty" if not rest.strip() else "wrong-credentials"


def bearer_failure(header: str) -> str:
    return scheme_failure(header, "bearer")


def basic_failure(header: str) -> str:
    return scheme_failure(header, "basic")


def auth_failed(area: str, reason: str) -> None:
    """Count one refused request, and log it (area, reason, method, path, client address;
    never a header or the query string, which a GET callback fills with the event)."""
    _COUNTERS[area, reason].inc()
    now = time.monotonic()
    with _lock:
        if now - _last_logged[area] < LOG_EVERY_S:
            _unlogged[area] += 1
            return
        _last_logged[area], more, _unlogged[area] = now, _unlogged[area], 0
    log.warning(
        "authentication failed: area=%s reason=%s %s %r from %s%s",
        area,
        reason,
        request.method,
        request.path,
        request.remote_addr,
        f" (and {more} more refused since the last line)" if more else "",
    )
