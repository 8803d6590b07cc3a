"""The dashboard: auth, pages, filters, search, keyset paging, timeline, CSRF, escaping."""

from __future__ import annotations

import html
import re
import secrets
from datetime import timedelta
from urllib.parse import quote, urlencode

import pytest
from sqlalchemy import select

from app import dashboard, messaging
from app.extensions import db
from app.ids import _ALPHABET, new_id
from app.models import CallbackEvent, Message, utcnow
from tests.conftest import basic

DASH = basic("dash", "dash-pass")
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"
XSS_TEXT = "<script>alert(1)</script>"
XSS_TAG = "<img src=x onerror=alert(1)>"
A, B, C = "+15555550100", "+15555550101", "+15555550102"


@pytest.fixture
def app(app):
    """The relay app with the dashboard registered (until the factory registers it)."""
    if "dashboard" not in app.blueprints:
        app.register_blueprint(dashboard.bp)
    return app


def id_at(when, n: int | None = None) -> str:
    """A relay id minted at ``when`` (ids begin with their creation time, see app/ids.py)."""
    value = (int(when.timestamp() * 1000) << 80) | (secrets.randbits(80) if n is None else n)
    return "rm-" + "".join(_ALPHABET[(value >> 5 * i) & 31] for i in range(25, -1, -1))


def add(app, ago=timedelta(0), **fields) -> str:
    """Insert a message created ``ago`` before now, with an id minted at that time."""
    when = utcnow() - ago
    values = {
        "id": id_at(when),
        "direction": "out",
        "from_number": A,
        "to_number": B,
        "text": "hi",
        "status": "queued",
        "created_at": when,
        "updated_at": when,
        "attempts": 0,
        "code_mismatch": False,
        **fields,
    }
    with app.app_context():
        db.session.add(Message(**values))
        db.session.commit()
    return values["id"]


def add_event(app, ago=timedelta(0), **fields) -> int:
    values = {
        "received_at": utcnow() - ago,
        "via": "primary",
        "method": "POST",
        "raw": "{}",
        **fields,
    }
    with app.app_context():
        event = CallbackEvent(**values)
        db.session.add(event)
        db.session.commit()
        return event.id


def callback(client, cb_auth, carrier_id, via="primary", method="POST", **fields):
    body = {
        "eventType": "sms",
        "direction": "out",
        "messageId": carrier_id,
        "from": A,
        "to": B,
        "state": "sent",
        "time": "2026-11-28T10:00:00.000Z",
        **fields,
    }
    path = "/callbacks/catapult" + ("/fallback" if via == "fallback" else "")
    if method == "GET":
        response = client.get(path + "?" + urlencode(body), headers=cb_auth)
    else:
        response = client.post(path, json=body, headers=cb_auth)
    assert response.status_code == 200


def page(client, url, status=200, **headers):
    response = client.get(url, headers={**DASH, **headers})
    assert response.status_code == status, response.data[:300]
    return response.get_data(as_text=True)


def listed(body: str) -> list[str]:
    return re.findall(r'<tr data-id="([^"]+)"', body)


def link(body: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]+)"', body)
    return html.unescape(found[1]) if found else None


def timeline_rows(body: str) -> dict[int, str]:
    rows = re.findall(r'<tr class="event" data-event-id="(\d+)">(.*?)</tr>', body, re.S)
    return {int(i): row for i, row in rows}


# ---------------------------------------------------------------- auth and headers

PAGES = [
    "/dashboard/",
    "/dashboard/messages",
    "/dashboard/events",
    "/dashboard/messages/rm-nothing",
    "/dashboard/static/dashboard.css",
]


@pytest.mark.parametrize("url", PAGES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("dash", "wrong"),
        basic("wrong", "dash-pass"),
        {"Authorization": "Bearer dash"},
        basic("cb-user", "cb-pass"),
    ],
)
def test_every_dashboard_url_needs_the_dashboard_credentials(client, url, headers):
    response = client.get(url, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert response.mimetype == "text/html"


def test_reconcile_post_needs_credentials_too(app, client):
    message_id = add(app, status="sent", carrier_message_id="m-auth")
    assert client.post(f"/dashboard/messages/{message_id}/reconcile").status_code == 401


def test_unset_dashboard_password_locks_everyone_out(tmp_path):
    from app import create_app
    from tests.conftest import make_config

    locked = create_app(make_config(tmp_path, DASHBOARD_USERNAME="", DASHBOARD_PASSWORD=""))
    if "dashboard" not in locked.blueprints:
        locked.register_blueprint(dashboard.bp)
    assert locked.test_client().get("/dashboard/", headers=basic("", "")).status_code == 401
    with locked.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("url,status", [("/dashboard/", 200), ("/dashboard/messages/rm-x", 404)])
def test_security_headers(client, url, status):
    for headers in (DASH, {}):
        response = client.get(url, headers=headers)
        assert response.status_code == (status if headers else 401)
        assert response.headers["Content-Security-Policy"].startswith(CSP)
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"


def test_a_crash_is_an_html_page_too(app, client, monkeypatch):
    def broken(message):
        raise RuntimeError("boom")

    monkeypatch.setattr(dashboard, "_strays", broken)
    response = client.get(f"/dashboard/messages/{add(app)}", headers=DASH)
    assert response.status_code == 500 and response.mimetype == "text/html"
    assert "boom" not in response.get_data(as_text=True)


def test_errors_are_html_pages(app, client):
    missing = client.get("/dashboard/messages/rm-missing", headers=DASH)
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert "No message with id" in missing.get_data(as_text=True)
    unknown_path = client.get("/dashboard/nope", headers=DASH)
    assert unknown_path.status_code == 404 and unknown_path.mimetype == "text/html"
    bad_cursor = client.get("/dashboard/events?after=abc", headers=DASH)
    assert bad_cursor.status_code == 400 and bad_cursor.mimetype == "text/html"


# ---------------------------------------------------------------- overview


def test_overview_counts_rates_fallback_share_stuck_and_chart(app, client):
    for seconds in (10, 20, 30):
        add(
            app,
            ago=timedelta(minutes=3),
            status="delivered",
            receipt_seconds=seconds,
            accepted_at=utcnow() - timedelta(minutes=3),
            final_at=utcnow() - timedelta(minutes=2),
        )
    add(
        app,
        ago=timedelta(minutes=3),
        status="not-delivered",
        final_at=utcnow(),
        accepted_at=utcnow() - timedelta(minutes=3),
    )
    add(app, ago=timedelta(minutes=3), status="error", final_at=utcnow())
    stuck_queued = add(app, ago=timedelta(minutes=10), status="queued")
    add(app, ago=timedelta(minutes=20), status="sent")
    add(app, ago=timedelta(minutes=1), status="sent")  # too young to be stuck
    add(app, ago=timedelta(hours=3), status="delivered", final_at=utcnow() - timedelta(hours=3))
    for via in ("primary", "primary", "primary", "fallback"):
        add_event(app, via=via, message_id=stuck_queued)
    add_event(app, parked=True, carrier_message_id="m-nobody")

    body = page(client, "/dashboard/")
    cards = {h: v for h, v in re.findall(r'<h2>([^<]+)</h2><p class="big">(.*?)</p>', body)}
    assert cards["Messages"] == "8"
    assert cards["Delivery rate"] == "60.0 %"  # 3 of 3 + 1 + 1
    assert cards["Time to receipt"] == "20.0 s"
    assert "p95 30.0 s" in body
    assert cards["Via fallback URL"] == "20.0 %"  # 1 of 5 callbacks
    assert ">1</a>" in cards["Unmatched events"]
    stuck = dict(re.findall(r's-(\w+)">\w+</span> <b>(\d+)</b></a></li>', body.split("Stuck")[1]))
    assert stuck == {"queued": "1", "sending": "0", "unknown": "0", "accepted": "0", "sent": "1"}
    assert "/dashboard/messages?status=queued&amp;until=" in body
    legend = dict(re.findall(r'class="key l-([\w-]+)">[^<]+<b>(\d+)</b>', body))
    # By creation time: 7 created in the last hour reached the carrier (3 + 1 delivered/not,
    # 1 error, 2 sent), and of those 3 are delivered, 1 not delivered, 1 failed.
    assert legend == {"sent": "7", "delivered": "3", "not-delivered": "1", "error": "1"}
    assert body.count("<polyline") == 4 and body.count('<rect class="slot"') == 60
    wider = page(client, "/dashboard/?window=6h")
    assert '<p class="big">9</p>' in wider and '<rect class="slot"' in wider


def test_stuck_link_lists_exactly_the_stuck_messages(app, client):
    old = add(app, ago=timedelta(minutes=30), status="unknown")
    add(app, ago=timedelta(minutes=1), status="unknown")
    url = html.unescape(
        re.search(
            r'href="(/dashboard/messages\?status=unknown&amp;until=[^"]*)"',
            page(client, "/dashboard/"),
        )[1]
    )
    assert listed(page(client, url)) == [old]


def test_chart_puts_each_message_in_its_bucket():
    rows = [
        ("sent", 100, 4),
        ("delivered", 101, 2),
        ("rejected", 102, 1),
        ("error", 102, 1),
        ("delivered", 99, 7),
    ]  # 99 is before the window: left off
    chart = dashboard._chart_geometry(rows, 100, 102, 60)
    totals = {s["name"]: s["total"] for s in chart["series"]}
    assert totals == {"sent": 4, "delivered": 2, "not-delivered": 0, "error": 2}
    points = {s["name"]: s["points"].split() for s in chart["series"]}
    assert points["sent"] == ["0.5,0.00", "1.5,100.00", "2.5,100.00"]  # 4 touches the top
    assert points["delivered"][1] == "1.5,50.00"  # 2 of 4: half way up, middle bucket
    assert (chart["top"], chart["mid"]) == (4, 2)
    assert len(chart["slots"]) == 3 and "error / rejected 2" in chart["slots"][2]


# ---------------------------------------------------------------- messages


@pytest.fixture
def four(app):
    """a: delivered A→B 3h ago; b: error A→C 30m; c: inbound C→A 10m; d: sent B→C 2m."""
    return {
        "a": add(
            app,
            ago=timedelta(hours=3),
            status="delivered",
            tag="order-1",
            carrier_message_id="m-aaaa",
            delivery_code=0,
        ),
        "b": add(
            app,
            ago=timedelta(minutes=30),
            status="error",
            to_number=C,
            tag="order-2",
            delivery_code=610,
        ),
        "c": add(
            app,
            ago=timedelta(minutes=10),
            direction="in",
            status="received",
            from_number=C,
            to_number=A,
        ),
        "d": add(
            app, ago=timedelta(minutes=2), status="sent", from_number=B, to_number=C, tag="order-1"
        ),
    }


def window(since=None, until=None):
    now = utcnow()
    args = {}
    if since is not None:
        args["since"] = (now - since).isoformat(timespec="seconds")
    if until is not None:
        args["until"] = (now - until).replace(tzinfo=None).isoformat(timespec="seconds")
    return urlencode(args)


@pytest.mark.parametrize(
    "query,expected",
    [
        ("", "dcba"),
        ("status=error", "b"),
        ("direction=in", "c"),
        ("direction=out&status=sent", "d"),
        ("number=%2B15555550100", "cba"),  # from or to A
        ("number=%2B1+(555)+555-0102", "dcb"),  # formatting ignored
        ("number=+15555550102", "dcb"),  # a "+" typed into the address bar arrives as a space
        ("number=%2B15555550101&status=delivered", "a"),
        ("tag=order-1", "da"),
        ("window=1h", "dcb"),
        ("window=15m&number=%2B15555550102", "dc"),
        # Relative to when the test runs, not when it was collected (minutes earlier).
        (lambda: window(since=timedelta(hours=1), until=timedelta(minutes=5)), "cb"),
        (lambda: window(until=timedelta(minutes=20)), "ba"),
        ("status=queued", ""),
    ],
)
def test_message_filters(client, four, query, expected):
    if callable(query):
        query = query()
    body = page(client, "/dashboard/messages?" + query)
    assert listed(body) == [four[k] for k in expected]
    if not expected:
        assert "No messages match." in body


def test_list_row_shows_the_columns(client, four):
    row = page(client, "/dashboard/messages?status=error").split(f'data-id="{four["b"]}"')[1]
    row = row.split("</tr>")[0]
    for text in ("out", A, C, 's-error">error', "610", "submit_sm failed", "order-2"):
        assert text in row


def test_bad_time_filter_is_reported_and_ignored(client, four):
    body = page(client, "/dashboard/messages?since=yesterday")
    assert "Ignored &#39;since&#39;: not a date and time (yesterday)." in body
    assert len(listed(body)) == 4


@pytest.mark.parametrize("key,by", [("a", "relay"), ("a", "carrier"), ("b", "relay")])
def test_search_by_id_opens_the_message(client, four, key, by):
    query = four[key] if by == "relay" else "m-aaaa"
    response = client.get("/dashboard/messages?" + urlencode({"q": f" {query} "}), headers=DASH)
    assert response.status_code == 302
    assert response.headers["Location"] == f"/dashboard/messages/{four[key]}"


def test_search_by_tag_filters_and_unknown_finds_nothing(client, four):
    assert listed(page(client, "/dashboard/messages?q=order-1")) == [four["d"], four["a"]]
    assert 'name="q" value="order-1"' in page(client, "/dashboard/messages?q=order-1")
    assert listed(page(client, "/dashboard/messages?q=m-nope")) == []


def test_detail_by_carrier_id(client, four):
    body = page(client, "/dashboard/messages/m-aaaa")
    assert f'<span class="mono">{four["a"]}</span>' in body


def walk(client, url: str, rel: str) -> list[list[str]]:
    pages = []
    while url:
        body = page(client, url)
        pages.append(listed(body))
        url = link(body, rel)
        assert len(pages) < 50
    return pages


@pytest.mark.parametrize("limit", [5, 4, 23, 30])
def test_keyset_pages_walk_every_row_once_both_ways(app, client, limit):
    ids = [add(app, ago=timedelta(seconds=100 - i)) for i in range(23)][::-1]
    older = walk(client, f"/dashboard/messages?limit={limit}", "next")
    assert [i for p in older for i in p] == ids
    assert all(len(p) == limit for p in older[:-1]) and older[-1]
    first = page(client, f"/dashboard/messages?limit={limit}")
    assert link(first, "prev") is None  # nothing newer than the newest
    if len(older) > 1:
        last_url = f"/dashboard/messages?limit={limit}&after={older[-2][-1]}"
        assert link(page(client, last_url), "next") is None
        newer = walk(client, link(page(client, last_url), "prev"), "prev")
        assert [i for p in newer[::-1] + [older[-1]] for i in p] == ids


def test_keyset_pages_merge_the_from_and_to_queries(app, client):
    ids = []
    for i in range(11):
        mine = {"from_number": C} if i % 2 else {"to_number": C}
        ids.append(add(app, ago=timedelta(seconds=100 - 2 * i), **mine))
        add(app, ago=timedelta(seconds=99 - 2 * i))  # A → B: never matches
    pages = walk(client, "/dashboard/messages?limit=4&number=%2B15555550102", "next")
    assert [len(p) for p in pages] == [4, 4, 3]
    assert [i for p in pages for i in p] == ids[::-1]


def test_page_past_the_end_links_back_to_the_newest(app, client):
    only = add(app)
    body = page(client, f"/dashboard/messages?after={only}&status=queued")
    assert listed(body) == [] and link(body, "prev") == "/dashboard/messages?status=queued"


def test_relay_ids_begin_with_their_creation_time():
    start = utcnow()
    minted = new_id()
    end = utcnow()
    assert dashboard.id_floor(start) <= minted < dashboard.id_floor(end + timedelta(milliseconds=1))


# ---------------------------------------------------------------- message detail


def test_timeline_shows_every_event_with_its_flags(app, client, cb_auth):
    accepted = utcnow() - timedelta(seconds=1)
    message_id = add(
        app,
        ago=timedelta(seconds=2),
        status="accepted",
        carrier_message_id="m-time",
        accepted_at=accepted,
        carrier_request={
            "to": B,
            "callbackUrl": "https://cb-user:cb-pass@relay.test/callbacks/catapult",
            "fallbackUrl": "https://***:***@fb/",
        },
        carrier_response={"status": 201, "headers": {"Location": "/m-time"}},
    )
    callback(client, cb_auth, "m-time")
    callback(
        client,
        cb_auth,
        "m-time",
        via="fallback",
        method="GET",
        deliveryState="delivered",
        deliveryCode=0,
        messageUri="https://u:uri-secret@api.test/v1/m-time",
    )
    callback(client, cb_auth, "m-time", deliveryState="delivered", deliveryCode=0)
    callback(client, cb_auth, "m-time", deliveryState="waiting")  # after the receipt: late
    callback(client, cb_auth, "m-time", deliveryState="delivered", deliveryCode=999)
    body = page(client, f"/dashboard/messages/{message_id}")
    rows = list(timeline_rows(body).values())
    assert len(rows) == 5
    assert "applied → sent" in rows[0] and "v-primary" in rows[0] and ">POST<" in rows[0]
    assert "applied → delivered" in rows[1] and "v-fallback" in rows[1] and ">GET<" in rows[1]
    assert ">duplicate<" in rows[2] and "applied →" not in rows[2]
    assert ">late / ignored<" in rows[3]
    assert ">code mismatch<" in rows[4] and ">late / ignored<" in rows[4]
    steps = re.findall(r's-([\w-]+)">[\w-]+</span> <time>', body.split("Status transitions")[1])
    assert steps == ["queued", "accepted", "sent", "delivered"]
    # Credentials in URLs never reach the page, already redacted or not.
    assert "cb-pass" not in body and "uri-secret" not in body
    assert "https://***:***@relay.test/callbacks/catapult" in body
    assert "&#34;status&#34;: 201" in body or '"status": 201' in html.unescape(body)
    assert "Carrier response (HTTP 201)" in body


def test_parked_then_attached_event_is_flagged(app, client, cb_auth):
    message_id = add(app, status="sending")
    callback(client, cb_auth, "m-parked", deliveryState="delivered", deliveryCode=0)
    events = page(client, "/dashboard/events?unmatched=1")
    assert ">parked<" in events and ">unmatched<" in events
    with app.app_context():
        messaging.record_accepted(db.session, db.session.get(Message, message_id), "m-parked")
        db.session.commit()
    [row] = timeline_rows(page(client, f"/dashboard/messages/{message_id}")).values()
    assert ">parked → attached<" in row and "applied → delivered" in row


def test_unmatched_events_naming_the_carrier_id_are_shown(app, client, cb_auth):
    message_id = add(app, status="sent", carrier_message_id="m-stray")
    add_event(app, carrier_message_id="m-stray", unparseable=True, raw="{broken")
    body = page(client, f"/dashboard/messages/{message_id}")
    assert "Unmatched events naming m-stray" in body and ">unparseable<" in body


# ---------------------------------------------------------------- reconcile and CSRF


class FakeCarrier:
    def __init__(self, answer=None, error=None):
        self.calls, self.answer, self.error = [], answer, error

    def get_message(self, carrier_id):
        self.calls.append(carrier_id)
        if self.error is not None:
            raise self.error
        return {
            "id": carrier_id,
            "state": "sent",
            "deliveryState": "delivered",
            "deliveryCode": 0,
            "deliveryDescription": "ok",
            **(self.answer or {}),
        }


@pytest.fixture
def carrier(app):
    fake = FakeCarrier()
    app.extensions["catapult_client"] = fake
    return fake


def token_of(body: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', body)[1]


@pytest.mark.parametrize("form", [{}, {"csrf_token": ""}, {"csrf_token": "forged"}])
def test_reconcile_without_the_right_token_is_400_and_asks_nobody(app, client, carrier, form):
    message_id = add(app, status="sent", carrier_message_id="m-csrf")
    token_of(page(client, f"/dashboard/messages/{message_id}"))  # the session has a token
    response = client.post(f"/dashboard/messages/{message_id}/reconcile", data=form, headers=DASH)
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert carrier.calls == []


def test_token_of_another_session_is_refused(app, client, carrier):
    message_id = add(app, status="sent", carrier_message_id="m-other")
    token = token_of(page(app.test_client(), f"/dashboard/messages/{message_id}"))
    token_of(page(client, f"/dashboard/messages/{message_id}"))
    response = client.post(
        f"/dashboard/messages/{message_id}/reconcile", data={"csrf_token": token}, headers=DASH
    )
    assert response.status_code == 400 and carrier.calls == []


def test_reconcile_with_the_token_asks_the_carrier_and_shows_the_answer(app, client, carrier):
    message_id = add(app, status="sent", carrier_message_id="m-recon", accepted_at=utcnow())
    token = token_of(page(client, f"/dashboard/messages/{message_id}"))
    response = client.post(
        "/dashboard/messages/m-recon/reconcile", data={"csrf_token": token}, headers=DASH
    )
    assert response.status_code == 303
    assert response.headers["Location"] == f"/dashboard/messages/{message_id}"
    assert carrier.calls == ["m-recon"]
    body = page(client, response.headers["Location"])
    assert "The carrier answered: status is now delivered." in body
    [row] = timeline_rows(body).values()
    assert "v-reconcile" in row and "applied → delivered" in row


def test_carrier_failure_is_a_flash_message_not_a_500(app, client):
    from app.catapult import CatapultError

    app.extensions["catapult_client"] = FakeCarrier(error=CatapultError("connection refused"))
    message_id = add(app, status="sent", carrier_message_id="m-down")
    token = token_of(page(client, f"/dashboard/messages/{message_id}"))
    response = client.post(
        f"/dashboard/messages/{message_id}/reconcile",
        data={"csrf_token": token},
        headers=DASH,
        follow_redirects=True,
    )
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Reconcile failed (502 carrier-error)" in body and "connection refused" in body
    assert timeline_rows(body) == {}


def test_reconcile_without_carrier_id_says_so(app, client, carrier):
    message_id = add(app, status="unknown")
    body = page(client, f"/dashboard/messages/{message_id}")
    assert "no carrier id yet" in body
    response = client.post(
        f"/dashboard/messages/{message_id}/reconcile",
        data={"csrf_token": token_of(body)},
        headers=DASH,
        follow_redirects=True,
    )
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and "Reconcile failed (409 no-carrier-id)" in text
    assert carrier.calls == []


def test_reconcile_of_unknown_message_is_404(app, client, carrier):
    token = token_of(page(client, f"/dashboard/messages/{add(app)}"))
    response = client.post(
        "/dashboard/messages/rm-none/reconcile", data={"csrf_token": token}, headers=DASH
    )
    assert response.status_code == 404 and carrier.calls == []


# ---------------------------------------------------------------- events


@pytest.fixture
def log(app):
    """Five events, oldest first: matched POST, fallback GET, parked, unparseable, reconcile."""
    message_id = add(app, status="sent", carrier_message_id="m-log")
    return message_id, [
        add_event(
            app,
            ago=timedelta(hours=2),
            message_id=message_id,
            carrier_message_id="m-log",
            applied=True,
            status_after="sent",
        ),
        add_event(
            app,
            ago=timedelta(minutes=50),
            via="fallback",
            method="GET",
            message_id=message_id,
            carrier_message_id="m-log",
            duplicate=True,
        ),
        add_event(app, ago=timedelta(minutes=20), carrier_message_id="m-else", parked=True),
        add_event(app, ago=timedelta(minutes=10), raw="{oops", unparseable=True),
        add_event(
            app,
            ago=timedelta(minutes=1),
            via="reconcile",
            method="GET",
            message_id=message_id,
            carrier_message_id="m-log",
        ),
    ]


def event_ids(body: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-event-id="(\d+)"', body)]


@pytest.mark.parametrize(
    "query,expected",
    [
        ("", [4, 3, 2, 1, 0]),
        ("unmatched=1", [3, 2]),
        ("via=fallback", [1]),
        ("via=reconcile", [4]),
        ("method=GET", [4, 1]),
        ("method=get&via=primary", []),
        ("carrier=m-log", [4, 1, 0]),
        ("window=1h", [4, 3, 2, 1]),
        ("window=15m&unmatched=1", [3]),
        (
            urlencode(
                {
                    "since": "2000-01-01T00:00",
                    "until": (utcnow() - timedelta(minutes=30)).isoformat(),
                }
            ),
            [1, 0],
        ),
    ],
)
def test_event_filters(client, log, query, expected):
    _, ids = log
    assert event_ids(page(client, "/dashboard/events?" + query)) == [ids[i] for i in expected]


def test_event_window_tolerates_ids_out_of_receive_order(app, client):
    since = utcnow() - timedelta(hours=1)
    add_event(app, ago=timedelta(hours=1, minutes=10))
    # Stored in the other order than received (a writer waited for the lock a few seconds).
    inside = add_event(app, received_at=since + timedelta(seconds=2))
    add_event(app, received_at=since - timedelta(seconds=5))
    body = page(client, "/dashboard/events?" + urlencode({"since": since.isoformat()}))
    assert event_ids(body) == [inside]


def test_events_link_to_their_message_and_show_flags(client, log):
    message_id, ids = log
    body = page(client, "/dashboard/events")
    assert body.count(f'href="/dashboard/messages/{message_id}"') == 3
    assert ">unparseable<" in body and ">duplicate<" in body and "{oops" in body


def test_event_pages_walk_every_row_once_both_ways(app, client):
    ids = [add_event(app, ago=timedelta(seconds=60 - i)) for i in range(12)][::-1]
    older = []
    url = "/dashboard/events?limit=5"
    while url:
        body = page(client, url)
        older.append(event_ids(body))
        url = link(body, "next")
    assert [i for p in older for i in p] == ids and [len(p) for p in older] == [5, 5, 2]
    back = event_ids(
        page(client, link(page(client, f"/dashboard/events?limit=5&after={ids[10]}"), "prev"))
    )
    assert back == ids[6:11]  # the five just newer than the last page


# ---------------------------------------------------------------- escaping and live fragments


def test_carrier_and_user_data_is_escaped_everywhere(app, client, cb_auth):
    message_id = add(
        app,
        status="sent",
        text=XSS_TEXT,
        tag=XSS_TAG,
        carrier_message_id="m-xss",
        error={"category": "x", "code": "y", "message": XSS_TEXT},
        carrier_response={"status": 400, "body": XSS_TAG},
    )
    callback(
        client,
        cb_auth,
        "m-xss",
        text=XSS_TEXT,
        deliveryDescription=XSS_TAG,
        deliveryState="not-delivered",
        deliveryCode=720,
    )
    add_event(app, raw=XSS_TAG, unparseable=True)
    urls = [
        f"/dashboard/messages/{message_id}",
        "/dashboard/messages",
        "/dashboard/events",
        "/dashboard/messages?" + urlencode({"q": XSS_TAG}),
        "/dashboard/messages?" + urlencode({"tag": XSS_TAG, "number": XSS_TEXT}),
        "/dashboard/events?" + urlencode({"since": XSS_TEXT, "carrier": XSS_TAG}),
        "/dashboard/messages/" + quote(XSS_TAG),
    ]
    for url in urls:
        body = client.get(url, headers=DASH).get_data(as_text=True)
        assert "<script>alert" not in body and "<img src=x" not in body, url
        assert "&lt;script&gt;" in body or "&lt;img src=x" in body, url
    detail = page(client, urls[0])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert "&lt;img src=x onerror=alert(1)&gt;" in detail
    tagged = page(client, "/dashboard/messages?" + urlencode({"tag": XSS_TAG}))
    assert listed(tagged) == [message_id]


@pytest.mark.parametrize(
    "url", ["/dashboard/", "/dashboard/messages", "/dashboard/events", "/dashboard/messages/{id}"]
)
def test_partial_refresh_returns_only_the_live_fragment(app, client, url):
    message_id = add(app, status="sent", carrier_message_id="m-live")
    response = client.get(url.format(id=message_id), headers={**DASH, "X-Partial": "1"})
    assert response.status_code == 200 and "X-Partial" in response.headers["Vary"]
    body = response.get_data(as_text=True)
    assert "<html" not in body and "<header" not in body and 'id="live"' not in body
    assert "<table" in body or 'class="cards"' in body
    full = page(client, url.format(id=message_id))
    assert '<div id="live" data-refresh="5.0">' in full and "dashboard.js" in full


def test_live_fragment_shows_a_new_callback(app, client, cb_auth):
    message_id = add(app, status="accepted", carrier_message_id="m-grow")
    url = f"/dashboard/messages/{message_id}"
    assert timeline_rows(page(client, url, **{"X-Partial": "1"})) == {}
    callback(client, cb_auth, "m-grow", deliveryState="delivered", deliveryCode=0)
    [row] = timeline_rows(page(client, url, **{"X-Partial": "1"})).values()
    assert "applied → delivered" in row


def test_events_api_and_dashboard_agree_on_unmatched(app, client, auth, log):
    api = client.get("/api/events?matched=false", headers=auth).get_json()["items"]
    with app.app_context():
        unmatched = db.session.scalars(
            select(CallbackEvent.id).where(CallbackEvent.message_id.is_(None))
        ).all()
    assert sorted(unmatched) == sorted(event_ids(page(client, "/dashboard/events?unmatched=1")))
    assert len(api) == len(unmatched)
