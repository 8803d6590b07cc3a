"""The dashboard under attack, without a browser: security headers on every answer it gives,
CSRF on every state-changing route, safe GETs, no inline script or style anywhere, and the
credentials of any URL redacted wherever one is shown or stored. (tests/browser/ renders the
hostile data in Chromium.)"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app import dashboard, messaging
from app.extensions import db
from app.models import CallbackEvent, Message, utcnow
from tests.conftest import basic, insert_message

pytestmark = pytest.mark.both_backends

DASH = basic("dash", "dash-pass")
SECRET = "cb-pass"  # the callback password of make_config: it must never be shown or stored
URL_WITH_CREDENTIALS = "https://cb-user:cb-pass@relay.example/callbacks/catapult"


def add(app, **fields) -> str:
    return insert_message(app, **{"status": "sent", "attempts": 1, **fields})


def rows(app) -> tuple[int, int]:
    with app.app_context():
        return (
            db.session.scalar(select(func.count()).select_from(Message)),
            db.session.scalar(select(func.count()).select_from(CallbackEvent)),
        )


def dashboard_urls(app, message_id: str) -> list[str]:
    """Every GET route of the dashboard, its parameters filled in."""
    values = {"message_id": message_id, "filename": "dashboard.css"}
    urls = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("dashboard.") and "GET" in rule.methods:
            urls.append(re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: values[m[1]], rule.rule))
    return sorted(urls)


def check_headers(response, where: str) -> None:
    csp = response.headers.get("Content-Security-Policy", "")
    directives = dict(d.strip().partition(" ")[::2] for d in csp.split(";") if d.strip())
    assert directives.get("frame-ancestors") == "'none'", where
    assert directives.get("script-src") == "'self'", where
    assert directives.get("default-src") == "'self'", where
    assert directives.get("base-uri") == "'none'", where
    assert directives.get("form-action") == "'self'", where
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, where
    assert response.headers.get("X-Content-Type-Options") == "nosniff", where
    assert response.headers.get("Referrer-Policy") == "no-referrer", where
    assert response.headers.get("X-Frame-Options") == "DENY", where


def test_every_answer_under_dashboard_has_the_security_headers(app, client, monkeypatch):
    message_id = add(app, carrier_message_id="m-headers")
    urls = dashboard_urls(app, message_id)
    assert len(urls) >= 5
    answers = []
    for url in urls:
        answers += [
            (url, client.get(url, headers=DASH)),
            (f"{url} (live fragment)", client.get(url, headers={**DASH, "X-Partial": "1"})),
            (f"{url} (no credentials)", client.get(url)),
        ]
    answers += [
        ("unknown message", client.get("/dashboard/messages/rm-none", headers=DASH)),
        ("unknown path", client.get("/dashboard/no/such/page", headers=DASH)),
        ("unknown path, no credentials", client.get("/dashboard/no/such/page")),
        ("wrong method", client.delete("/dashboard/", headers=DASH)),
        ("bad cursor", client.get("/dashboard/events?after=x", headers=DASH)),
        ("missing static file", client.get("/dashboard/static/none.css", headers=DASH)),
        ("csrf refused", client.post(f"/dashboard/messages/{message_id}/reconcile", headers=DASH)),
        (
            "body too large",
            client.post("/dashboard/", data=b"x" * (1 << 21), headers=DASH),
        ),
    ]

    def broken(_message):
        raise RuntimeError("boom")

    monkeypatch.setattr(dashboard, "_strays", broken)
    answers.append(("crash", client.get(f"/dashboard/messages/{message_id}", headers=DASH)))
    statuses = set()
    for where, response in answers:
        check_headers(response, where)
        statuses.add(response.status_code)
        response.close()  # static files are streamed
    assert {200, 400, 401, 404, 405, 413, 500} <= statuses


def test_the_outage_page_has_the_security_headers(app, client, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def down(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(dashboard.queries, "stats", down)
    monkeypatch.setattr(dashboard, "_cached", lambda key, ttl, compute: compute())
    response = client.get("/dashboard/", headers=DASH)
    assert response.status_code == 503
    check_headers(response, "outage")


def test_pages_carry_no_inline_script_style_or_handler(app, client, cb_auth):
    """The CSP forbids inline code; the pages must not need any (the browser tests count
    violations too)."""
    message_id = add(app, carrier_message_id="m-inline")
    client.post(
        "/callbacks/catapult",
        json={"messageId": "m-inline", "state": "sent"},
        headers=cb_auth,
    )
    for url in dashboard_urls(app, message_id):
        if "/static/" in url:
            continue
        body = client.get(url, headers=DASH).get_data(as_text=True)
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", body) == [], url
        assert re.findall(r"\son[a-z]+\s*=", body) == [], url
        assert re.findall(r"\sstyle\s*=", body) == [], url
        assert "javascript:" not in body.lower(), url


# ---------------------------------------------------------------- CSRF


class Carrier:
    def __init__(self):
        self.asked = []

    def get_message(self, carrier_id):
        self.asked.append(carrier_id)
        return {"id": carrier_id, "state": "sent", "deliveryState": "delivered", "deliveryCode": 0}


def token_of(body: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', body)[1]


def test_every_state_changing_route_needs_the_csrf_token(app, client):
    """Whatever route takes more than GET: without this session's token it is 400, asks
    nobody and changes nothing, also with a cross-site Origin and the right credentials."""
    carrier = Carrier()
    app.extensions["catapult_client"] = carrier
    message_id = add(app, carrier_message_id="m-csrf")
    page = client.get(f"/dashboard/messages/{message_id}", headers=DASH).get_data(as_text=True)
    token = token_of(page)
    other = token_of(
        app.test_client()
        .get(f"/dashboard/messages/{message_id}", headers=DASH)
        .get_data(as_text=True)
    )
    changing = [
        (rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("dashboard.")
        for method in rule.methods - {"GET", "HEAD", "OPTIONS"}
    ]
    assert changing, "the dashboard has a reconcile button"
    before = rows(app)
    for rule, method in changing:
        url = rule.rule.replace("<message_id>", message_id)
        for form in ({}, {"csrf_token": ""}, {"csrf_token": other}, {"csrf_token": token + "x"}):
            response = client.open(
                url,
                method=method,
                data=form,
                headers={**DASH, "Origin": "https://evil.example"},
            )
            assert response.status_code == 400, (url, method, form)
        # JSON instead of a form carries no token either.
        response = client.open(url, method=method, json={"csrf_token": token}, headers=DASH)
        assert response.status_code == 400
    assert carrier.asked == [] and rows(app) == before
    ok = client.post(
        f"/dashboard/messages/{message_id}/reconcile", data={"csrf_token": token}, headers=DASH
    )
    assert ok.status_code == 303 and carrier.asked == ["m-csrf"]


def test_no_get_changes_anything(app, client, cb_auth):
    """GETs are safe: a link or an <img> on another site cannot make the dashboard act."""
    carrier = Carrier()
    app.extensions["catapult_client"] = carrier
    message_id = add(app, carrier_message_id="m-safe", updated_at=utcnow() - timedelta(days=1))
    before = rows(app)
    for url in dashboard_urls(app, message_id):
        for suffix in ("", "/reconcile", "?csrf_token=x&reconcile=1"):
            client.get(url + suffix, headers=DASH).close()
    assert rows(app) == before and carrier.asked == []


def test_the_session_cookie_is_http_only_and_same_site(app, client):
    message_id = add(app, carrier_message_id="m-cookie")
    response = client.get(f"/dashboard/messages/{message_id}", headers=DASH)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # Nothing but the dashboard keeps a session: the API and callbacks set no cookie.
    assert "Set-Cookie" not in client.get("/healthz").headers


# ---------------------------------------------------------------- credentials in URLs


def test_credentials_in_carrier_echoes_are_never_stored_or_shown(app, client, auth):
    """The carrier may name our callbackUrl in an error or a response body; what is stored
    (and so what the API and the dashboard show) has the credentials redacted."""
    message_id = add(app, status="sending")
    with app.app_context():
        message = db.session.get(Message, message_id)
        messaging.record_rejected(
            db.session,
            message,
            {
                "category": "bad-request",
                "code": "callback-invalid-url",
                "message": f"The URL {URL_WITH_CREDENTIALS} is not a valid callbackUrl",
            },
            request={"to": "+15555550101", "callbackUrl": URL_WITH_CREDENTIALS},
            response={"status": 400, "body": f'{{"message": "{URL_WITH_CREDENTIALS}"}}'},
        )
        db.session.commit()
        stored = db.session.get(Message, message_id)
        kept = repr((stored.error, stored.carrier_request, stored.carrier_response))
    assert SECRET not in kept and "***:***@relay.example" in kept
    api = client.get(f"/api/messages/{message_id}", headers=auth).get_data(as_text=True)
    page = client.get(f"/dashboard/messages/{message_id}", headers=DASH).get_data(as_text=True)
    assert SECRET not in api and SECRET not in page
    assert "***:***@relay.example" in page


def test_credentials_in_urls_are_redacted_on_every_page(app, client, cb_auth):
    """Data stored before redaction, or from elsewhere (a media URL, a callback payload, a
    GET callback's encoded query): shown redacted all the same."""
    message_id = add(
        app,
        carrier_message_id="m-shown",
        media=["https://media-user:media-secret@media.example/a.png"],
        error={"category": "x", "code": "y", "message": f"see {URL_WITH_CREDENTIALS}"},
        carrier_request={"callbackUrl": URL_WITH_CREDENTIALS},
    )
    client.post(
        "/callbacks/catapult",
        json={"messageId": "m-shown", "state": "sent", "messageUri": URL_WITH_CREDENTIALS},
        headers=cb_auth,
    )
    client.get(
        "/callbacks/catapult",
        query_string={"messageId": "m-shown", "state": "sent", "callbackUrl": URL_WITH_CREDENTIALS},
        headers=cb_auth,
    )
    for url in dashboard_urls(app, message_id):
        with client.get(url, headers=DASH) as response:
            body = response.get_data(as_text=True)
        assert SECRET not in body and "media-secret" not in body, url
    detail = client.get(f"/dashboard/messages/{message_id}", headers=DASH).get_data(as_text=True)
    assert "https://***:***@media.example/a.png" in detail
