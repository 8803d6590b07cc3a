"""Proxy trust: ``X-Forwarded-*`` is believed only from the proxies the operator names.

``TRUSTED_PROXIES`` is how many proxy hops in front of the relay append to
``X-Forwarded-For`` (and set ``X-Forwarded-Proto``/``-Host``/``-Port``); 0 when clients reach
the relay directly, where those headers are whatever the client wrote. ``FORWARDED_ALLOW_IPS``
names the addresses those proxies connect from. gunicorn reads the same list
(``gunicorn.conf.py``) for the scheme headers it honours itself, so the two never disagree:
a peer outside the list, or any peer with 0 hops, cannot move the relay's idea of the client's
address or scheme.
"""

from __future__ import annotations

import ipaddress

from werkzeug.middleware.proxy_fix import ProxyFix

DEFAULT_ALLOW = "127.0.0.1,::1"  # gunicorn's own default: a proxy on the same host


def parse_allow_list(raw: str) -> list[str]:
    """The comma-separated addresses/networks of ``FORWARDED_ALLOW_IPS`` (``*`` = any peer);
    ValueError names the first one that is neither."""
    items = [item.strip() for item in raw.split(",") if item.strip()]
    for item in items:
        if item != "*":
            ipaddress.ip_network(item)  # raises ValueError (strict, as gunicorn checks it)
    return items


class TrustedProxies:
    """WSGI middleware: ``ProxyFix`` with ``hops`` for requests whose peer is in ``allow``;
    every other request is passed on untouched (its ``X-Forwarded-*`` are not believed)."""

    def __init__(self, app, hops: int, allow: list[str]) -> None:
        self.app = app
        # No X-Forwarded-Prefix: the relay is served at the root, and a prefix a proxy does not
        # overwrite would be the client's own.
        self.fixed = ProxyFix(app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
        self.any_peer = "*" in allow
        networks = [ipaddress.ip_network(a) for a in allow if a != "*"]
        # Single addresses are a set lookup (the common case); networks are checked after.
        self.addresses = {str(n.network_address) for n in networks if n.num_addresses == 1}
        self.networks = [n for n in networks if n.num_addresses > 1]

    def trusted(self, peer: str | None) -> bool:
        """Whether ``peer`` (``REMOTE_ADDR``) is one of the trusted proxies."""
        if self.any_peer or peer in self.addresses:
            return True
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            # No IP address: a UNIX socket, which only local processes can reach. gunicorn
            # trusts those unconditionally too, and the two must agree.
            return True
        return any(address in network for network in self.networks)

    def __call__(self, environ, start_response):
        if self.trusted(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)


def wrap(app, hops: int, allow: list[str]):
    """The app's WSGI callable behind the proxy trust ``hops``/``allow`` ask for."""
    if hops <= 0 or not allow:
        return app  # exposed directly: no header moves the client's address or scheme
    return TrustedProxies(app, hops, allow)
