"""Hostile data in every field a carrier or a user can fill, on every dashboard page, in
Chromium: nothing runs, nothing is injected, nothing trips the CSP, and it all shows as text.

The relay here is one of its own (long hostile strings must not leak into the layout checks
of the other browser tests).
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote, urlencode

import pytest
import requests

from app.models import utcnow
from tests.browser.conftest import _open, served_relay
from tests.conftest import CALLBACK_PASSWORD, CALLBACK_USER

SCRIPT = "<script>window.__xss='script'</script>"
IMG = "<img src=x onerror=\"window.__xss='img'\">"
SVG = '"><svg onload="window.__xss=\'svg\'">'
ATTR = "' autofocus onfocus='window.__xss=1' x='"
FRAME = "<iframe srcdoc=\"<script>parent.__xss='frame'</script>\"></iframe>"
PRE = "</pre></details><script>window.__xss='pre'</script>"
TEMPLATE = "{{7*7}} ${7*7} {%raw%}"
JS_URL = "javascript:window.__xss='href'"
EVERYTHING = " ".join([SCRIPT, IMG, SVG, ATTR, FRAME, PRE, TEMPLATE])
SHORT = "<i>x</i>"  # for columns of 16 characters: escaping still shows
AUTH = (CALLBACK_USER, CALLBACK_PASSWORD)
# What would be there had anything been injected: elements, handlers, scripts, frames.
# (The overview's chart is the one svg of the pages, without handlers.)
INJECTED = (
    "script:not([src]), iframe, object, embed, svg:not(main .chart svg), img, i, "
    "[onerror], [onload], [onfocus], [autofocus], [srcdoc]"
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A relay holding hostile data in every field, and the pages that show it."""
    with served_relay(tmp_path_factory.mktemp("hostile")) as relay:
        now = utcnow() - timedelta(minutes=3)
        out = relay.add(
            status="not-delivered",
            text=EVERYTHING,
            tag=EVERYTHING,
            from_number=IMG[:40],
            to_number=SCRIPT[:40],
            media=[JS_URL, "https://media.example/" + quote(EVERYTHING)],
            carrier_message_id=IMG,
            state=SHORT,
            delivery_state=SHORT,
            delivery_code=720,
            delivery_description=EVERYTHING,
            error={"category": SCRIPT, "code": IMG, "message": EVERYTHING},
            carrier_request={"text": EVERYTHING, "tag": SVG},
            carrier_response={"status": 400, "body": EVERYTHING},
            accepted_at=now,
            final_at=now,
        )
        unsent = relay.add(status="queued", text=EVERYTHING, tag=SCRIPT)
        cb = relay.url + "/callbacks/catapult"
        headers = {"User-Agent": EVERYTHING[:200], "Content-Type": "application/json; " + SVG}
        event = {
            "messageId": IMG,
            "state": "sent",
            "deliveryState": "not-delivered",
            "deliveryCode": 720,
            "deliveryDescription": EVERYTHING,
            "text": EVERYTHING,
            "tag": EVERYTHING,
            "media": [JS_URL],
        }
        for response in (
            requests.post(
                cb, json=event, headers={"User-Agent": headers["User-Agent"]}, auth=AUTH, timeout=5
            ),
            requests.post(
                cb + "/fallback", data=EVERYTHING.encode(), headers=headers, auth=AUTH, timeout=5
            ),
            requests.get(
                cb, params={"messageId": SVG, "state": SHORT, "x": EVERYTHING}, auth=AUTH, timeout=5
            ),
            requests.post(
                cb,
                json={
                    "messageId": "m-xssin0000000000000000000",
                    "direction": "in",
                    "state": "received",
                    "from": SCRIPT[:40],
                    "to": IMG[:40],
                    "text": EVERYTHING,
                    "media": [JS_URL, IMG],
                },
                auth=AUTH,
                timeout=5,
            ),
        ):
            assert response.status_code == 200
        found = requests.get(
            relay.url + "/api/messages?direction=in",
            headers={"Authorization": "Bearer test-api-key"},
            timeout=5,
        ).json()["items"]
        inbound = found[0]["id"]
        query = {"q": EVERYTHING}
        filters = {
            "tag": EVERYTHING,
            "number": SCRIPT,
            "since": IMG,
            "until": SVG,
            "status": SCRIPT,
            "direction": IMG,
            "window": SVG,
        }
        event_filters = {
            "carrier": IMG,
            "since": SCRIPT,
            "via": SVG,
            "method": IMG,
            "unmatched": "1",
        }
        relay.pages = [
            "/dashboard/",
            "/dashboard/?window=24h",
            "/dashboard/?" + urlencode({"window": EVERYTHING}),
            "/dashboard/messages",
            "/dashboard/messages?" + urlencode(query),
            "/dashboard/messages?" + urlencode(filters),
            f"/dashboard/messages/{out}",
            f"/dashboard/messages/{quote(IMG, safe='')}",  # by carrier id
            f"/dashboard/messages/{unsent}",
            f"/dashboard/messages/{inbound}",
            "/dashboard/messages/" + quote(EVERYTHING, safe=""),  # the 404 page
            "/dashboard/events",
            "/dashboard/events?" + urlencode(event_filters),
        ]
        relay.ids = {"out": out, "unsent": unsent, "inbound": inbound}
        yield relay


@pytest.fixture
def tab(browser, hostile):
    context, page = _open(browser, hostile, viewport={"width": 1280, "height": 900})
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    yield page
    context.close()
    # The 404 page (a hostile id) is one on purpose; anything else in the console is not.
    assert [p for p in page.problems if "status of 404" not in p] == []


def assert_inert(page, where: str) -> None:
    assert page.evaluate("window.__xss") is None, where
    assert page.dialogs == [], where
    assert page.evaluate("window.__csp") == [], where  # escaped text never trips the CSP
    injected = page.evaluate(
        f"Array.from(document.querySelectorAll({INJECTED!r})).map(e => e.outerHTML)"
    )
    assert injected == [], where
    hrefs = page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    assert all(h.startswith(page.url.split("/dashboard")[0]) for h in hrefs), (where, hrefs)
    actions = page.evaluate("Array.from(document.forms).map(f => f.action)")
    assert all(a.startswith(page.url.split("/dashboard")[0]) for a in actions), (where, actions)


def test_hostile_data_is_inert_on_every_page(tab, hostile, shot):
    for url in hostile.pages:
        response = tab.goto(url)
        assert response.status in (200, 404), url
        tab.wait_for_timeout(1300)  # one live refresh swaps the fragment in, too
        assert_inert(tab, url)
    shot(tab, "xss-events")


def test_hostile_data_shows_as_text(tab, hostile, shot):
    tab.goto(f"/dashboard/messages/{hostile.ids['out']}")
    tab.wait_for_timeout(1300)
    for details in tab.locator("details").all():
        details.evaluate("d => { d.open = true; }")
    text = tab.locator("main").inner_text()
    for piece in (SCRIPT, IMG, SVG.strip('"> '), FRAME, "{{7*7}}", JS_URL, SHORT):
        assert piece in text, piece
    assert_inert(tab, "detail, everything open")
    shot(tab, "xss-message")
    tab.goto(f"/dashboard/messages/{hostile.ids['inbound']}")
    assert JS_URL in tab.locator(".fields").inner_text()
    assert_inert(tab, "inbound")


def test_the_reconcile_form_and_its_answer_are_inert(tab, hostile):
    """The one state-changing form, posted from a page full of hostile data (no carrier id
    yet: the relay answers itself, without asking the carrier)."""
    tab.goto(f"/dashboard/messages/{hostile.ids['unsent']}")
    tab.get_by_role("button", name="Reconcile now").click()
    tab.wait_for_url(f"**/dashboard/messages/{hostile.ids['unsent']}")
    assert "Reconcile failed (409 no-carrier-id)" in tab.locator(".flash").first.inner_text()
    assert_inert(tab, "after reconcile")
