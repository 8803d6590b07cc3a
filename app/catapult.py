"""The Catapult v1 messaging client: send (one or a batch of up to 50), read, list.

Every call goes through an injected ``requests.Session``-like object (``session.request``) with
an explicit timeout, so tests fake the carrier and nothing can hang forever. ``send`` never
raises for carrier or transport trouble: it classifies each message's outcome, because the
dispatcher must decide per message whether a retry is safe (catapult-v1.md §1 "Errors").
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

CLIENT_EXTENSION = "catapult_client"  # app.extensions key of the shared client (or a fake)
MAX_BATCH = 50  # catapult-v1.md §1: more than 50 is 403 multi-message-limit
# A 401 ``authentication`` error means the relay's token/secret/user id is wrong: every message
# would fail the same way. Rejecting would turn one ops mistake into permanently lost messages,
# and the carrier refused before sending anything, so the message goes back to the queue and
# is tried again after this long (seconds), giving an operator time to fix the configuration.
AUTH_RETRY_AFTER = 300.0
# Longest wait we accept from a carrier rate-limit header, so a bogus value cannot park a queue.
MAX_RETRY_AFTER = 3600.0
_BODY_LIMIT = 2000  # characters of a carrier body kept on the message's timeline
_HEADERS_OF_INTEREST = ("Location", "Content-Type", "X-RateLimit-Reset", "Retry-After")
# Per-message codes (401) that are about the message's ``from`` number, not our credentials.
_NUMBER_AUTH_CODES = frozenset({"number-access-denied", "no-allocated-number"})
_STATUS_CATEGORY = {
    400: "bad-request",
    401: "authentication",
    403: "authorization",
    404: "not-found",
    409: "conflict",
    429: "too-many-requests",
}


class CatapultError(Exception):
    """A failed carrier call: transport error, non-2xx answer or unreadable body."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        category: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.category = category
        self.code = code

    def as_dict(self) -> dict[str, Any]:
        """The relay's error shape ``{category, code, message}``."""
        return {"category": self.category, "code": self.code, "message": self.message}


@dataclass
class SendResult:
    """What became of one message of a send request."""

    kind: str  # accepted | rejected | retry | unknown
    carrier_id: str | None = None
    error: dict[str, Any] | None = None
    retry_after: float | None = None  # seconds, when the carrier (or our policy) says so
    request: dict[str, Any] = field(default_factory=dict)  # as sent, URL credentials redacted
    response: dict[str, Any] | None = None  # {status, headers, body}, trimmed


def redact_url(url: Any) -> Any:
    """``https://user:pass@host/p`` → ``https://***:***@host/p``; anything else unchanged."""
    if not isinstance(url, str):
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***:***@{host}"))


# user:pass@ in a URL: plain, JSON-escaped (:\/\/) or percent-encoded (GET callback bodies).
_URL_CREDENTIALS = re.compile(
    r"(://|:\\/\\/|%3A%2F%2F)(?:(?!%2F)[^/@\s\"'<>&?#\\])+(@|%40)", re.IGNORECASE
)


def redact_text(text: str) -> str:
    """``user:pass@`` in any URL within ``text`` becomes ``***:***@`` (also when it was)."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m[1]}***:***{m[2]}", text)


def redact_credentials(value: Any) -> Any:
    """``value`` (JSON-like) with the credentials of every URL in its strings redacted: what
    the carrier echoes (an error naming our callbackUrl, a resource showing it) is stored and
    shown, the credentials never."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_credentials(v) for v in value]
    return value


def redact_message(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of a carrier message dict safe to store: callback credentials removed."""
    return {
        k: redact_url(v) if k in ("callbackUrl", "fallbackUrl") else v for k, v in message.items()
    }


def id_from_location(location: str | None) -> str | None:
    """The message id is the last path segment of ``Location`` (absolute or relative)."""
    if not location:
        return None
    path = urlsplit(location.strip()).path.rstrip("/")
    segment = path.rsplit("/", 1)[-1]
    return segment or None


class CatapultClient:
    """Catapult v1 ``/v1/users/{userId}/messages`` over HTTP Basic (token:secret)."""

    def __init__(
        self,
        base_url: str,
        user_id: str,
        token: str,
        secret: str,
        session: Any = None,
        timeout: float = 15.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.user_id = user_id
        self.timeout = timeout
        self.session = session if session is not None else requests.Session()
        self._auth = (token, secret)
        self._wall_clock = wall_clock  # epoch seconds, for X-RateLimit-Reset

    @property
    def messages_url(self) -> str:
        """``{base}/v1/users/{userId}/messages``."""
        return f"{self.base_url}/v1/users/{self.user_id}/messages"

    # ------------------------------------------------------------------ send

    def send(self, messages: list[dict[str, Any]]) -> list[SendResult]:
        """Send 1..50 messages in one request; one ``SendResult`` per message, in order."""
        if not messages:
            return []
        if len(messages) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} messages per request, got {len(messages)}")
        # One message goes as an object (201 + Location); several as an array (202 + items).
        body: Any = messages[0] if len(messages) == 1 else messages
        requests_sent = [redact_message(m) for m in messages]
        try:
            response = self._request("POST", self.messages_url, json=body)
        except requests.RequestException as exc:
            kind, error = _classify_transport(exc)
            return [SendResult(kind, error=error, request=r) for r in requests_sent]

        status = response.status_code
        headers = _headers_of_interest(response)
        text = _text(response)
        if 200 <= status < 300:
            return self._success(response, status, headers, text, requests_sent)
        kind, error, retry_after = self._classify_error(response, status, text)
        trimmed = {"status": status, "headers": headers, "body": text[:_BODY_LIMIT]}
        return [
            SendResult(kind, error=error, retry_after=retry_after, request=r, response=trimmed)
            for r in requests_sent
        ]

    def _success(self, response, status, headers, text, requests_sent) -> list[SendResult]:
        parsed = _json_or_none(text)
        if len(requests_sent) > 1 and isinstance(parsed, list):
            return self._batch_items(parsed, status, headers, requests_sent)
        if len(requests_sent) > 1:
            # A 2xx without the per-item array: the messages may well have gone, but we cannot
            # tell which. Never resend; the tag-correlated events or a reconcile settle them.
            error = _error(
                "unavailable",
                "invalid-response",
                f"HTTP {status} to a multi-send without a JSON array of results",
            )
            trimmed = {"status": status, "headers": headers, "body": text[:_BODY_LIMIT]}
            return [
                SendResult("unknown", error=error, request=r, response=trimmed)
                for r in requests_sent
            ]
        # A single send is 201 with the id in Location and an empty body that is not labelled
        # JSON (catapult-v1.md 1); the body is read whatever its label says, only for an id when
        # Location is missing. A 2xx without either still means the carrier took it:
        # ``accepted`` without an id; the event tagged with our id brings it.
        carrier_id = id_from_location(response.headers.get("Location")) or _id_from_body(parsed)
        trimmed = {"status": status, "headers": headers, "body": text[:_BODY_LIMIT]}
        return [
            SendResult(
                "accepted", carrier_id=carrier_id, request=requests_sent[0], response=trimmed
            )
        ]

    def _batch_items(self, items, status, headers, requests_sent) -> list[SendResult]:
        results = []
        for index, request in enumerate(requests_sent):
            item = items[index] if index < len(items) else None
            response = {"status": status, "headers": headers, "body": item}
            if not isinstance(item, dict):
                # The 202 array is in request order (catapult-v1.md §1); a missing item means
                # we cannot tell what happened to this one, so it must not be resent.
                error = _error(
                    "unavailable",
                    "invalid-response",
                    f"No result for item {index} of the multi-send",
                )
                results.append(
                    SendResult("unknown", error=error, request=request, response=response)
                )
                continue
            if item.get("result") == "accepted":
                carrier_id = id_from_location(item.get("location"))
                results.append(
                    SendResult(
                        "accepted", carrier_id=carrier_id, request=request, response=response
                    )
                )
                continue
            # node-bandwidth renames ``error`` to ``failed``; accept both spellings.
            raw = item.get("error") if item.get("error") is not None else item.get("failed")
            error = _normalize_error(raw if isinstance(raw, dict) else {}, 400)
            kind, retry_after = _item_error_kind(error)
            results.append(
                SendResult(
                    kind, error=error, retry_after=retry_after, request=request, response=response
                )
            )
        return results

    def _classify_error(self, response, status: int, text: str):
        """(kind, error, retry_after) for a non-2xx answer to a send."""
        error = _normalize_error(_error_body(text), status)
        code = error["code"]
        if status == 429:
            return "retry", error, self._reset_after(response)
        if status == 403 and code.startswith("message-rate-limit"):
            # Over-limit sends are 403, not 429 (catapult-v1.md "Rate limits"): not sent.
            return "retry", error, self._reset_after(response)
        if status == 401 and code not in _NUMBER_AUTH_CODES:
            return "retry", error, AUTH_RETRY_AFTER
        if status == 400 and code == "message-delay-limit":
            # The account's carrier-side queue is full: nothing was sent, try again later.
            return "retry", error, self._reset_after(response)
        if 400 <= status < 500:
            return "rejected", error, None
        # 5xx (503 message-gateway-unavailable: "may or may not have gone") and anything odd:
        # the outcome is unknown and an automatic resend could deliver the message twice.
        return "unknown", error, None

    def _reset_after(self, response) -> float | None:
        """Seconds to wait from ``X-RateLimit-Reset`` (epoch ms) or ``Retry-After`` (seconds)."""
        raw = response.headers.get("X-RateLimit-Reset")
        value = _number(raw)
        if value is not None:
            if value > 1e11:  # epoch milliseconds, as documented
                wait = value / 1000.0 - self._wall_clock()
            elif value > 1e9:  # epoch seconds, as some rate limiters send it
                wait = value - self._wall_clock()
            else:  # a delta in seconds
                wait = value
            return min(max(wait, 0.0), MAX_RETRY_AFTER)
        value = _number(response.headers.get("Retry-After"))
        if value is not None:
            return min(max(value, 0.0), MAX_RETRY_AFTER)
        return None

    # ------------------------------------------------------------------ read

    def get_message(self, carrier_id: str) -> dict[str, Any]:
        """``GET .../messages/{id}``: the carrier's message resource."""
        response = self._checked("GET", f"{self.messages_url}/{carrier_id}")
        data = _json_or_none(_text(response))
        if not isinstance(data, dict):
            raise CatapultError(
                "The carrier answered the message lookup without a JSON object",
                status=response.status_code,
                category="unavailable",
                code="invalid-response",
            )
        return data

    def list_messages(self, max_pages: int = 1000, **filters: Any) -> Iterator[dict[str, Any]]:
        """``GET .../messages`` with filters, following ``Link rel="next"`` verbatim."""
        url: str | None = self.messages_url
        params: dict[str, Any] | None = filters or None
        for _ in range(max_pages):
            if url is None:
                return
            response = self._checked("GET", url, params=params)
            data = _json_or_none(_text(response))
            if not isinstance(data, list):
                raise CatapultError(
                    "The carrier answered the message list without a JSON array",
                    status=response.status_code,
                    category="unavailable",
                    code="invalid-response",
                )
            yield from (item for item in data if isinstance(item, dict))
            # The next link carries sortKeyLT and size itself (catapult-v1.md §2): no params.
            url = _next_link(response.headers.get("Link"), url)
            params = None

    def _checked(self, method: str, url: str, **kwargs: Any):
        try:
            response = self._request(method, url, **kwargs)
        except requests.RequestException as exc:
            raise CatapultError(
                f"{type(exc).__name__}: {exc}", category="unavailable", code="transport-error"
            ) from exc
        if not 200 <= response.status_code < 300:
            error = _normalize_error(_error_body(_text(response)), response.status_code)
            raise CatapultError(
                error["message"],
                status=response.status_code,
                category=error["category"],
                code=error["code"],
            )
        return response

    def _request(self, method: str, url: str, **kwargs: Any):
        # Timeout on every call: a hung carrier must never hang the dispatcher.
        return self.session.request(
            method,
            url,
            auth=self._auth,
            timeout=self.timeout,
            headers={"Accept": "application/json"},
            **kwargs,
        )


def build_client(config: Mapping[str, Any]) -> CatapultClient:
    """A client from the relay's settings (``CATAPULT_*``, ``CARRIER_TIMEOUT_S``)."""
    return CatapultClient(
        config["CATAPULT_API_URL"],
        config["CATAPULT_USER_ID"],
        config["CATAPULT_API_TOKEN"],
        config["CATAPULT_API_SECRET"],
        timeout=float(config.get("CARRIER_TIMEOUT_S") or 15.0),
    )


def client_for(app: Any) -> Any:
    """The app's shared client (``app.extensions["catapult_client"]``; tests put a fake there),
    created on first use so no connection pool exists before gunicorn forks."""
    client = app.extensions.get(CLIENT_EXTENSION)
    if client is None:
        client = app.extensions.setdefault(CLIENT_EXTENSION, build_client(app.config))
    return client


# ---------------------------------------------------------------------- helpers


def _error(category: str, code: str, message: str) -> dict[str, Any]:
    return {"category": category, "code": code, "message": message}


def _text(response) -> str:
    try:
        text = response.text
    except Exception:  # undecodable bytes: keep going, the status still classifies it
        return ""
    return text if isinstance(text, str) else ""


def _json_or_none(text: str) -> Any:
    if not text or not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _id_from_body(parsed: Any) -> str | None:
    """The message id of a JSON object body (``id``, or ``messageId`` as on the resource)."""
    if not isinstance(parsed, dict):
        return None
    value = parsed.get("id") or parsed.get("messageId")
    return value if isinstance(value, str) and value.strip() else None


def _error_body(text: str) -> dict[str, Any]:
    """The error object of a body, whatever its content type (the platform sent text/plain
    errors at times: catapult-v1.md §1); a non-JSON body becomes the message."""
    parsed = _json_or_none(text)
    if isinstance(parsed, dict):
        return parsed
    stripped = (text or "").strip()
    return {"message": stripped[:500]} if stripped else {}


def _normalize_error(body: dict[str, Any], status: int) -> dict[str, Any]:
    """``{category, code, message}`` with every key filled: carrier bodies may lack any of them
    (the documented 429 body has no ``message``)."""
    category = body.get("category")
    code = body.get("code")
    message = body.get("message")
    category = (
        str(category)
        if category
        else _STATUS_CATEGORY.get(status, "unavailable" if status >= 500 else "bad-request")
    )
    code = str(code) if code else f"http-{status}"
    if not message or not isinstance(message, str):
        message = f"The carrier answered HTTP {status} ({category}/{code}) without a message"
    return _error(category, code, message)


def _item_error_kind(error: dict[str, Any]) -> tuple[str, float | None]:
    """A 202 item's error: rate limits and a full carrier queue mean "not sent, try later"."""
    code = error["code"]
    if code.startswith("message-rate-limit") or code == "message-delay-limit":
        return "retry", None
    if error["category"] == "too-many-requests":
        return "retry", None
    if error["category"] == "unavailable":
        return "unknown", None  # e.g. message-gateway-unavailable: it may have gone
    return "rejected", None


def _classify_transport(exc: requests.RequestException) -> tuple[str, dict[str, Any]]:
    """``retry`` only when the request provably never reached the carrier; else ``unknown``."""
    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.ConnectTimeout) or _never_connected(exc):
        code = "connect-timeout" if _is_connect_timeout(exc) else "connection-refused"
        return "retry", _error("unavailable", code, f"{name}: {exc}"[:500])
    if isinstance(
        exc,
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ),
    ):
        return "retry", _error("unavailable", "invalid-url", f"{name}: {exc}"[:500])
    if isinstance(exc, requests.exceptions.ReadTimeout):
        code = "read-timeout"
    elif isinstance(exc, requests.exceptions.ConnectionError):
        code = "connection-lost"  # reset or closed after the request may have been written
    else:
        code = "transport-error"
    return "unknown", _error("unavailable", code, f"{name}: {exc}"[:500])


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its args that are exceptions, their ``reason``, and the cause chain."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        stack.extend(item.args)
        stack.append(getattr(item, "reason", None))
        stack.append(item.__cause__)
        stack.append(item.__context__)


def _never_connected(exc: BaseException) -> bool:
    # urllib3 raises NewConnectionError (refused, unreachable, DNS failure) or
    # ConnectTimeoutError before a single byte of the request was written.
    return any(isinstance(e, (NewConnectionError, ConnectTimeoutError)) for e in _causes(exc))


def _is_connect_timeout(exc: BaseException) -> bool:
    # NewConnectionError subclasses ConnectTimeoutError in urllib3: tell them apart.
    return isinstance(exc, requests.exceptions.ConnectTimeout) or any(
        isinstance(e, ConnectTimeoutError) and not isinstance(e, NewConnectionError)
        for e in _causes(exc)
    )


def _headers_of_interest(response) -> dict[str, str]:
    headers = response.headers or {}
    return {
        name: str(headers.get(name))
        for name in _HEADERS_OF_INTEREST
        if headers.get(name) is not None
    }


def _number(raw: Any) -> float | None:
    if raw is None:
        return None
    try:
        return float(str(raw).strip())
    except ValueError:
        return None


def _next_link(header: str | None, current: str) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header, or None."""
    if not header:
        return None
    for part in header.split(","):
        pieces = part.split(";")
        target = pieces[0].strip()
        if not (target.startswith("<") and target.endswith(">")):
            continue
        rels = [p.strip().replace('"', "").replace(" ", "") for p in pieces[1:]]
        if any(r.lower() in ("rel=next",) for r in rels):
            return urljoin(current, target[1:-1])
    return None
