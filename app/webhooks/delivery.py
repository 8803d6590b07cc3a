"""One delivery attempt: sign the stored body, POST it to the checked address, judge the answer.

Standard Webhooks (signing with the ``standardwebhooks`` package): ``webhook-id`` is the
delivery's own id, the same on every attempt, so the receiver can drop a repeat;
``webhook-timestamp`` is the attempt's time; ``webhook-signature`` is ``v1,<base64
HMAC-SHA256>`` of ``{id}.{timestamp}.{body}``. Success is a 2xx within ``TIMEOUT_S``; a
redirect is not followed (it is not a 2xx, and following it would call an unchecked URL).

The address is resolved and checked (``urls.check``) right before the attempt and the
connection goes to that very address: urllib3 is given the IP, with the URL's host as the
``Host`` header, TLS server name and certificate name, so no second lookup happens between
the check and the connect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import urllib3
from standardwebhooks import Webhook

from . import urls

TIMEOUT_S = 15.0  # the whole attempt: connect, send, status line and headers
CONNECT_TIMEOUT_S = 5.0
USER_AGENT = "catapult-relay-webhooks/1"


@dataclass(slots=True)
class Outcome:
    """What one attempt got: a status code, or the error that stopped it."""

    ok: bool
    status_code: int | None
    error: str | None
    latency_ms: float


def signed_headers(secret: str, uid: str, body: str, when: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent at ``when``."""
    return {
        "webhook-id": uid,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(uid, when, body),
    }


def attempt(
    url: str, secret: str, uid: str, body: str, allow_private: bool, timeout: float = TIMEOUT_S
) -> Outcome:
    """POST ``body`` to ``url``, signed; never raises."""
    started = time.monotonic()

    def done(status: int | None, error: str | None) -> Outcome:
        elapsed = time.monotonic() - started
        if status is not None and elapsed > timeout:
            status, error = None, f"answered after {elapsed:.1f} s (over {timeout:g} s)"
        ok = status is not None and 200 <= status < 300
        return Outcome(ok, status, error, round(elapsed * 1000, 1))

    try:
        target = urls.check(url, allow_private)
    except urls.UrlRefused as exc:
        return done(None, f"refused: {exc}")
    payload = body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Host": _host_header(target),
        **signed_headers(secret, uid, body, datetime.now(UTC)),
    }
    error = "no address"
    for address in target.addresses:  # every one was checked; the next if one cannot connect
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            return done(None, f"timed out after {timeout:g} s")
        try:
            status, text = _post(target, address, payload, headers, left)
        except urllib3.exceptions.NewConnectionError as exc:
            error = f"could not connect to {address}: {_reason(exc)}"
            continue
        except urllib3.exceptions.HTTPError as exc:  # timeouts, TLS, a broken answer
            return done(None, f"{type(exc).__name__}: {_reason(exc)}")
        except OSError as exc:
            return done(None, f"{type(exc).__name__}: {exc}"[:500])
        return done(status, None if 200 <= status < 300 else text)
    return done(None, error)


def _post(target: urls.Target, address: str, payload: bytes, headers: dict, left: float):
    timeout = urllib3.Timeout(connect=min(CONNECT_TIMEOUT_S, left), read=left)
    named = not target.host.startswith("[") and not _is_ip(target.host)
    options = {}
    if target.scheme == "https":
        options = {"cert_reqs": "CERT_REQUIRED"}
        if named:  # SNI and the certificate check name the host, not the address
            options.update(server_hostname=target.host, assert_hostname=target.host)
        pool_class = urllib3.HTTPSConnectionPool
    else:
        pool_class = urllib3.HTTPConnectionPool
    pool = pool_class(address, target.port, maxsize=1, retries=False, timeout=timeout, **options)
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=payload,
            headers=headers,
            redirect=False,
            retries=False,
            assert_same_host=False,
            preload_content=False,
        )
        # The body is not read: only the status counts, and a receiver that drips its answer
        # must not hold a worker thread past the timeout.
        status = response.status
        response.close()
        return status, None if 200 <= status < 300 else f"HTTP {status}"
    finally:
        pool.close()


def _host_header(target: urls.Target) -> str:
    default = 443 if target.scheme == "https" else 80
    return target.host if target.port == default else f"{target.host}:{target.port}"


def _is_ip(host: str) -> bool:
    return all(part.isdigit() for part in host.split(".")) and host.count(".") == 3


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason)[:500]
