"""One HTTP attempt of a callback, as the v1 platform makes it (catapult-v1.md section 3)."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

import requests

USER_AGENT = "BandwidthAPI/v1 (Catapult v1 sandbox)"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt came to: success is a 2xx answer within the timeout."""

    ok: bool
    status_code: int | None
    error: str | None
    latency_ms: float


def split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without user-info, and the ``Authorization`` header built from that user-info."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=hostport)), f"Basic {token}"


def redact(url: str | None) -> str | None:
    """The URL with its password replaced by ``***`` (for logs and introspection)."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    masked = f"{user}:***" if has_password else "***"
    return urlunsplit(parts._replace(netloc=f"{masked}@{hostport}"))


def query_value(key: str, value: Any) -> str:
    """A field as a query parameter; MMS media as a bracketed comma list ``[url1, url2]``."""
    if key == "media" and isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def encode_query(payload: dict[str, Any]) -> str:
    """Percent-encoded query string of the event's fields; absent fields omitted."""
    pairs = [(k, query_value(k, v)) for k, v in payload.items() if v is not None]
    return urlencode(pairs, quote_via=quote, safe="")


def with_query(url: str, query: str) -> str:
    """Append ``query`` to the URL's own query string."""
    parts = urlsplit(url)
    joined = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit(parts._replace(query=joined, fragment=""))


class CallbackTransport:
    """Makes attempts with one ``requests.Session`` per worker thread."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxies or .netrc: the URL is the whole truth
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def attempt(
        self, url: str, method: str, payload: dict[str, Any], timeout_ms: int
    ) -> AttemptResult:
        """One request; timeouts, connection errors and non-2xx all count as failure."""
        target, authorization = split_credentials(url)
        headers = {"User-Agent": USER_AGENT}
        if authorization:
            headers["Authorization"] = authorization
        data: bytes | None = None
        if method == "GET":
            target = with_query(target, encode_query(payload))
        else:
            headers["Content-Type"] = JSON_CONTENT_TYPE
            data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        timeout = timeout_ms / 1000.0
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            response = self._session().request(
                method,
                target,
                data=data,
                headers=headers,
                timeout=(timeout, timeout),
                allow_redirects=False,
            )
            try:
                status = response.status_code
                response.content  # noqa: B018 - drain so the connection can be reused
            finally:
                response.close()
        except requests.Timeout:
            error = f"timeout after {timeout_ms} ms"
        except requests.ConnectionError as exc:
            # urllib3 sometimes reports a read timeout as a connection error.
            timed_out = "timed out" in str(exc).lower()
            reason = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
            detail = f": {reason.group(0).strip()}" if reason else ""
            error = f"timeout after {timeout_ms} ms" if timed_out else f"connection error{detail}"
        except requests.RequestException as exc:
            error = f"request error: {exc}"
        latency = (time.perf_counter() - started) * 1000.0
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        return AttemptResult(ok=error is None, status_code=status, error=error, latency_ms=latency)

    def close(self) -> None:
        """Close every worker's session (call after the workers have stopped)."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
