"""Every area's credentials, attacked over real HTTP: missing, empty, wrong, another area's,
the wrong scheme, very long, non-ASCII, NUL. Each answers 401, stores nothing, is counted in
``relay_auth_failures_total`` and logged without what it carried; comparisons take constant
time (every secret is compared, whatever matched or failed first).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from app import api, callbacks, create_app, dashboard, security
from app.extensions import db
from app.models import CallbackEvent, IdempotencyKey, Message
from tests.conftest import API_KEY, CALLBACK_PASSWORD, CALLBACK_USER, close_app, make_config
from tests.servers import raw_request, served_relay

pytestmark = pytest.mark.both_backends

DASH_USER, DASH_PASSWORD = "dash", "dash-pass"
SMS = b'{"from": "+19195551212", "to": "+19195551313", "text": "hi"}'
EVENT = b'{"messageId": "m-auth00000000000000000000", "state": "sent"}'


def basic(user: bytes | str, password: bytes | str) -> bytes:
    user = user.encode() if isinstance(user, str) else user
    password = password.encode() if isinstance(password, str) else password
    return b"Basic " + base64.b64encode(user + b":" + password)


def hostile_basic(user: str, password: str) -> dict[str, bytes | None]:
    """Authorization values that must not open a Basic-protected area (``user``/``password``
    are its real credentials, which some of these come close to)."""
    return {
        "missing": None,
        "empty": b"",
        "scheme-only": b"Basic",
        "scheme-and-space": b"Basic ",
        "no-colon": b"Basic " + base64.b64encode((user + password).encode()),
        "wrong-password": basic(user, password + "x"),
        "password-prefix": basic(user, password[:-1]),
        "wrong-user": basic(user + "x", password),
        "swapped": basic(password, user),
        "empty-pair": basic("", ""),
        "not-base64": b"Basic %%%not base64%%%",
        "bearer-password": b"Bearer " + password.encode(),
        "digest": b'Digest username="' + user.encode() + b'"',
        "api-key-as-password": basic(user, API_KEY),
        "very-long": basic(user, password + "x" * 6000),
        "non-ascii": basic("üser", "pässwörd-ключ"),
        "non-ascii-near": basic(user, password + "é"),
        "invalid-utf8": basic(user.encode(), password.encode() + b"\xff\xfe"),
        "latin1-header": b"Basic \xe9\xe8\xff",
        "nul": basic(user, password + "\x00"),
    }


HOSTILE_BEARER = {
    "missing": None,
    "empty": b"",
    "scheme-only": b"Bearer",
    "scheme-and-space": b"Bearer ",
    "wrong": b"Bearer wrong-key",
    "prefix": b"Bearer " + API_KEY[:-1].encode(),
    "longer": b"Bearer " + API_KEY.encode() + b"x",
    "basic": basic(API_KEY, ""),
    "basic-key-as-password": basic("api", API_KEY),
    "token-scheme": b"Token " + API_KEY.encode(),
    "no-scheme": API_KEY.encode(),
    "very-long": b"Bearer " + b"k" * 8000,
    "non-ascii": "Bearer ключ-🙂".encode(),
    "latin1": b"Bearer \xe9\xff" + API_KEY.encode(),
    "nul": b"Bearer " + API_KEY.encode() + b"\x00",
    "callback-credentials": basic(CALLBACK_USER, CALLBACK_PASSWORD),
}

API_ROUTES = [
    ("GET", "/api/messages", b""),
    ("GET", "/api/messages/rm-00000000000000000000000000", b""),
    ("POST", "/api/messages/rm-00000000000000000000000000/reconcile", b""),
    ("GET", "/api/events", b""),
    ("GET", "/api/stats", b""),
    ("POST", "/api/messages", SMS),
]
CALLBACK_ROUTES = [
    ("GET", "/callbacks/catapult?messageId=m-auth&state=sent", b""),
    ("POST", "/callbacks/catapult", EVENT),
    ("GET", "/callbacks/catapult/fallback?messageId=m-auth&state=sent", b""),
    ("POST", "/callbacks/catapult/fallback", EVENT),
]
DASHBOARD_ROUTES = [
    ("GET", "/dashboard/", b""),
    ("GET", "/dashboard/messages", b""),
    ("GET", "/dashboard/events", b""),
    ("GET", "/dashboard/messages/rm-00000000000000000000000000", b""),
    ("GET", "/dashboard/static/dashboard.js", b""),
    ("POST", "/dashboard/messages/rm-00000000000000000000000000/reconcile", b"csrf_token=x"),
]
AREAS = {
    "api": (API_ROUTES, HOSTILE_BEARER, "Bearer"),
    "callbacks": (CALLBACK_ROUTES, hostile_basic(CALLBACK_USER, CALLBACK_PASSWORD), "Basic"),
    "dashboard": (DASHBOARD_ROUTES, hostile_basic(DASH_USER, DASH_PASSWORD), "Basic"),
}
CASES = [
    (area, name, value)
    for area, (_, hostile, _) in AREAS.items()
    for name, value in hostile.items()
]
SECRETS = [API_KEY, CALLBACK_PASSWORD, DASH_PASSWORD, "pässwörd", "ключ", "k" * 50]


@pytest.fixture
def served(tmp_path, db_url):
    with served_relay(make_config(tmp_path, DATABASE_URL=db_url)) as relay:
        yield relay


def stored(app) -> tuple[int, int, int]:
    with app.app_context():
        return tuple(
            db.session.scalar(select(func.count()).select_from(model))
            for model in (Message, CallbackEvent, IdempotencyKey)
        )


def failures(area: str) -> float:
    return sum(
        REGISTRY.get_sample_value("relay_auth_failures_total", {"area": area, "reason": r}) or 0
        for r in security.REASONS
    )


@pytest.mark.parametrize("area", AREAS)
def test_hostile_credentials_get_401_store_nothing_and_are_counted(served, area):
    app, port = served
    routes, hostile, scheme = AREAS[area]
    before = stored(app)
    for name, value in hostile.items():
        counted = failures(area)
        for method, target, body in routes:
            headers = [] if value is None else [("Authorization", value)]
            if body:
                kind = b"application/x-www-form-urlencoded" if area == "dashboard" else None
                headers.append(("Content-Type", kind or b"application/json"))
            headers.append(("Idempotency-Key", b"auth-matrix"))
            status, answer_headers, answer = raw_request(
                port, method, target.encode(), headers, body
            )
            case = (name, method, target, answer[:200])
            assert status == 401, case
            assert answer_headers["WWW-Authenticate"].startswith(scheme), case
            if area == "dashboard":
                assert answer_headers["Content-Type"].startswith("text/html"), case
                csp = answer_headers["Content-Security-Policy"]
                assert "frame-ancestors 'none'" in csp, case
            else:
                assert answer_headers["Content-Type"] == "application/json", case
                assert json.loads(answer)["category"] == "authentication", case
        assert failures(area) == counted + len(routes), name
    assert stored(app) == before


@pytest.mark.parametrize(
    "area,header",
    [
        ("api", b"Bearer " + API_KEY.encode()),
        ("api", b"bearer " + API_KEY.encode()),  # the scheme is case-insensitive (RFC 9110)
        ("callbacks", basic(CALLBACK_USER, CALLBACK_PASSWORD)),
        ("dashboard", basic(DASH_USER, DASH_PASSWORD)),
    ],
)
def test_the_right_credentials_open_every_route_and_count_no_failure(served, area, header):
    app, port = served
    routes, _, _ = AREAS[area]
    counted = failures(area)
    for method, target, body in routes:
        headers = [("Authorization", header)]
        if body:
            json_body = area != "dashboard"
            headers.append(
                (
                    "Content-Type",
                    b"application/json" if json_body else b"application/x-www-form-urlencoded",
                )
            )
        status, _, answer = raw_request(port, method, target.encode(), headers, body)
        assert status not in (401, 403), (method, target, answer[:200])
    assert failures(area) == counted


def test_failures_are_logged_without_what_they_carried(served, caplog, monkeypatch):
    """One line per refused request (unthrottled here), naming area, reason, method, path and
    client, and never the header, the query string, a password or a key."""
    app, port = served
    monkeypatch.setattr(security, "LOG_EVERY_S", 0.0)
    sent = []
    with caplog.at_level(logging.WARNING, logger="relay.auth"):
        for area, _name, value in CASES:
            routes, _, _ = AREAS[area]
            method, target, body = routes[0]
            if value is not None:
                sent.append(value)
            headers = [] if value is None else [("Authorization", value)]
            raw_request(port, method, target.encode(), headers, body)
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.auth"]
    assert len(lines) == len(CASES)
    for line in lines:
        assert line.startswith("authentication failed: area=")
        assert "reason=" in line and "from 127.0.0.1" in line
        assert "messageId" not in line and "?" not in line  # no query string
        for secret in SECRETS:
            assert secret not in line, line
        for value in sent:
            token = value.partition(b" ")[2]
            if len(token) >= 4:
                assert token.decode("latin-1") not in line, line
    reasons = {line.split("reason=")[1].split()[0] for line in lines}
    assert reasons == set(security.REASONS)


def test_log_lines_are_throttled_but_every_failure_is_counted(served, caplog, monkeypatch):
    app, port = served
    monkeypatch.setitem(security._last_logged, "api", float("-inf"))  # as if a while ago
    counted = failures("api")
    with caplog.at_level(logging.WARNING, logger="relay.auth"):
        for _ in range(30):
            raw_request(port, "GET", b"/api/stats")
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.auth"]
    assert failures("api") == counted + 30
    assert 1 <= len(lines) <= 3  # one a second at most


# ---------------------------------------------------------------- constant time


class Spy:
    """``hmac.compare_digest`` that records the lengths it was given."""

    def __init__(self):
        self.calls = []
        self.real = hmac.compare_digest

    def __call__(self, a, b):
        self.calls.append((len(a), len(b)))
        return self.real(a, b)


@pytest.mark.parametrize("token", [b"key-one", b"key-three", b"nope", b"k" * 500])
def test_the_api_compares_every_key_as_equal_length_digests(tmp_path, monkeypatch, token):
    """Whichever key matches (or none), each is compared, as 32-byte digests: neither the time
    taken nor the token's length says how close it came or which key it is."""
    spy = Spy()
    monkeypatch.setattr(api.hmac, "compare_digest", spy)
    app = create_app(make_config(tmp_path, API_KEYS=["key-one", "key-two", "key-three"]))
    with app.app_context():
        db.create_all()
    try:
        response = app.test_client().get(
            "/api/stats", headers={"Authorization": "Bearer " + token.decode()}
        )
        assert response.status_code in (200, 401)
        assert spy.calls == [(32, 32)] * 3
    finally:
        close_app(app)


@pytest.mark.parametrize(
    "module,header,config",
    [
        (callbacks, basic("wrong-user", CALLBACK_PASSWORD), {}),
        (callbacks, basic(CALLBACK_USER, "wrong-password"), {}),
        (dashboard, basic("wrong-user", DASH_PASSWORD), {}),
        (dashboard, basic(DASH_USER, "wrong-password"), {}),
    ],
)
def test_basic_areas_compare_both_user_and_password(tmp_path, monkeypatch, module, header, config):
    """A wrong user name does not skip the password comparison (nor the other way round)."""
    spy = Spy()
    monkeypatch.setattr(module.hmac, "compare_digest", spy)
    app = create_app(make_config(tmp_path, **config))
    path = "/callbacks/catapult" if module is callbacks else "/dashboard/"
    try:
        response = app.test_client().get(path, headers={"Authorization": header.decode()})
        assert response.status_code == 401
        assert len(spy.calls) >= 2
    finally:
        close_app(app)
