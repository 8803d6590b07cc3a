"""Proxy trust from the environment: ``TRUSTED_PROXIES`` hops of ``X-Forwarded-*``, believed
only from the peers of ``FORWARDED_ALLOW_IPS``, against gunicorn with gunicorn.conf.py (gunicorn
decides the scheme from ``X-Forwarded-Proto`` itself, the app the rest: both must agree)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests

from app.proxies import TrustedProxies, parse_allow_list, wrap
from tests.conftest import API_KEY
from tests.deploy.conftest import wait_for_lines

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SPOOF = {
    "X-Forwarded-For": "198.51.100.1, 203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "8443",
}


def believed(relay) -> tuple[str, str, str]:
    """(client address, scheme, host) the relay believes for a request carrying SPOOF: the
    address from the error details Catapult-shaped errors carry, the scheme and host from the
    absolute ``next`` link of a list page."""
    missing = requests.get(f"{relay.url}/api/no-such-route", headers=SPOOF, timeout=10)
    details = {d["name"]: d["value"] for d in missing.json()["details"]}
    page = requests.get(f"{relay.url}/api/messages?limit=1", headers={**SPOOF, **AUTH}, timeout=10)
    link = urlsplit(page.json()["next"])
    return details["remoteAddress"], link.scheme, link.netloc


@pytest.fixture
def two_messages():
    """Queue two messages (so that a list page of one has a ``next`` link)."""

    def post(relay) -> None:
        body = [{"from": "+15555550100", "to": f"+1555555010{i}", "text": "hi"} for i in (1, 2)]
        answer = requests.post(f"{relay.url}/api/messages", json=body, headers=AUTH, timeout=10)
        assert answer.status_code == 202

    return post


def test_with_no_trusted_hop_a_client_cannot_spoof_its_address_or_scheme(
    sqlite_db, processes, two_messages
):
    relay = processes.web(sqlite_db, workers=1, TRUSTED_PROXIES=0)
    two_messages(relay)
    address, scheme, host = believed(relay)
    assert (address, scheme, host) == ("127.0.0.1", "http", f"127.0.0.1:{relay.port}")
    # The request line says the same.
    lines = wait_for_lines(
        relay.log_path,
        lambda lines: sum(line.get("route") == "/api/messages" for line in lines) == 2,
    )
    assert {line["remote"] for line in lines if line.get("message") == "request"} == {"127.0.0.1"}


def test_with_one_hop_the_proxys_forwarded_values_are_used(sqlite_db, processes, two_messages):
    relay = processes.web(sqlite_db, workers=1, TRUSTED_PROXIES=1)  # FORWARDED_ALLOW_IPS default
    two_messages(relay)
    # The last X-Forwarded-For entry is the one the proxy appended; earlier ones are the
    # client's own words and are not believed.
    assert believed(relay) == ("203.0.113.7", "https", "evil.example:8443")

    # The request line too: the unspoofed POST from 127.0.0.1, the spoofed GET from the proxy's.
    def remotes(lines):
        return {line["remote"] for line in lines if line.get("route") == "/api/messages"}

    lines = wait_for_lines(relay.log_path, lambda lines: len(remotes(lines)) == 2)
    assert remotes(lines) == {"127.0.0.1", "203.0.113.7"}


def test_a_peer_outside_forwarded_allow_ips_is_not_a_proxy(sqlite_db, processes, two_messages):
    """The same list for gunicorn (scheme) and the app (address, host): neither believes."""
    relay = processes.web(
        sqlite_db, workers=1, TRUSTED_PROXIES=1, FORWARDED_ALLOW_IPS="192.0.2.10,10.1.0.0/16"
    )
    two_messages(relay)
    assert believed(relay) == ("127.0.0.1", "http", f"127.0.0.1:{relay.port}")


def _seen(middleware, remote: str) -> str:
    environ = {"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": "203.0.113.7"}
    got = {}

    def app(env, _start):
        got["addr"] = env["REMOTE_ADDR"]
        return []

    middleware.app = app
    middleware.fixed.app = app
    middleware(environ, None)
    return got["addr"]


@pytest.mark.parametrize(
    "allow,remote,trusted",
    [
        ("127.0.0.1,::1", "127.0.0.1", True),
        ("127.0.0.1,::1", "::1", True),
        ("127.0.0.1,::1", "10.0.0.5", False),
        ("10.0.0.0/8", "10.0.0.5", True),
        ("10.0.0.0/8", "11.0.0.5", False),
        ("*", "192.0.2.1", True),
        ("127.0.0.1", "", True),  # a UNIX socket: trusted, as gunicorn trusts it
    ],
)
def test_trusted_peers(allow, remote, trusted):
    middleware = TrustedProxies(lambda e, s: [], 1, parse_allow_list(allow))
    assert middleware.trusted(remote) is trusted
    assert (_seen(middleware, remote) == "203.0.113.7") is trusted


def test_zero_hops_installs_no_proxy_fix_and_bad_lists_are_refused():
    app = object()
    assert wrap(app, 0, ["*"]) is app
    with pytest.raises(ValueError):
        parse_allow_list("127.0.0.1,not-an-address")
    with pytest.raises(ValueError):
        parse_allow_list("192.168.1.1/24")  # host bits set: gunicorn refuses it too
