"""Which webhook URLs the relay may call: http(s) to a public address, never its own network.

A relay that POSTs wherever a user points it is a way into the network it runs in (SSRF): its
loopback, the cloud's metadata address (169.254.169.254), private ranges. So an endpoint's
host must resolve only to global addresses, unless ``WEBHOOK_ALLOW_PRIVATE=1`` (tests, local
runs). The check runs when the endpoint is saved and again before every attempt, on the
addresses the attempt then connects to (``delivery``), so a DNS answer that changes after the
check (rebinding) cannot send a request anywhere that was not checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

# What the OpenAPI document promises (``schemas``): http(s)://host[:port][/path][?query], in
# printable ASCII, no credentials, no fragment. The host is a name, an IPv4 address or a
# bracketed IPv6 address; whether it may be called is decided by ``check`` (422, not 400).
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
URL_PATTERN = (
    rf"[Hh][Tt][Tt][Pp][Ss]?://(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]{{2,45}}\])"
    rf'(?::{_PORT})?(?:[/?][!"$-~]*)?'
)
MAX_URL = 2000
_URL = re.compile(URL_PATTERN)


class UrlRefused(ValueError):
    """The URL is well formed but must not be called (its address, or it does not resolve)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: the URL's parts and the checked addresses to connect to."""

    scheme: str
    host: str  # as written in the URL (the Host header and the TLS server name)
    port: int
    path: str  # path and query, at least "/"
    addresses: tuple[str, ...]


def well_formed(url: str) -> bool:
    """Whether ``url`` matches the documented pattern (the 400 / 422 divide)."""
    return isinstance(url, str) and len(url) <= MAX_URL and _URL.fullmatch(url) is not None


def refused_address(address: str) -> str | None:
    """Why the relay must not connect to ``address``, or None when it is a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def resolve(host: str, port: int) -> tuple[str, ...]:
    """Every address ``host`` resolves to (an IP literal is itself), in resolver order."""
    literal = host[1:-1] if host.startswith("[") else host
    try:
        infos = socket.getaddrinfo(literal, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"the host {host!r} does not resolve ({exc})") from None
    found = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not found:
        raise UrlRefused(f"the host {host!r} does not resolve")
    return found


def check(url: str, allow_private: bool) -> Target:
    """The target of ``url`` with its addresses resolved now; ``UrlRefused`` when it must not
    be called. Every address must be public: a name that also resolves to a private one is
    refused (an attempt could otherwise be steered there by the resolver's order)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        raise UrlRefused(str(exc)) from None
    netloc_host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") else None
    host = netloc_host or parts.netloc
    addresses = resolve(host, port)
    if not allow_private:
        for address in addresses:
            why = refused_address(address)
            if why:
                raise UrlRefused(
                    f"the host {host!r} resolves to {address}, {why}: refused "
                    "(WEBHOOK_ALLOW_PRIVATE=1 allows it for local runs)"
                )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(parts.scheme.lower(), host, port, path, addresses)
