"""The dashboard in a real Chromium: pages, filters, search, live timeline, XSS, phone width."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from urllib.parse import quote

import pytest

from app.models import utcnow

XSS_TEXT = '<img src=x onerror="window.__xss=1;alert(1)">'
XSS_TAG = "<script>window.__xss=2;alert(2)</script>"


def number() -> str:
    """A phone number of this test's own, so tests sharing the server never see each other."""
    return "+1555" + "".join(secrets.choice("0123456789") for _ in range(7))


def carrier_id() -> str:
    return "m-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def traffic(relay):
    """A few minutes of traffic: every outcome, a fallback receipt, an unmatched event."""
    now = utcnow()
    ids = {}
    for i, status in enumerate(["delivered"] * 6 + ["not-delivered", "error", "sent", "queued"]):
        cid = carrier_id() if status != "queued" else None
        ids.setdefault(status, []).append(
            relay.add(
                status=status,
                carrier_message_id=cid,
                tag=f"order-{i}",
                accepted_at=now - timedelta(minutes=10 - i) if cid else None,
                final_at=now - timedelta(minutes=9 - i)
                if status in ("delivered", "error")
                else None,
                receipt_seconds=40.0 + i if status == "delivered" else None,
                delivery_code=0 if status == "delivered" else None,
            )
        )
    relay.callback(carrier_id(), via="fallback")
    return ids


def no_page_overflow(tab) -> None:
    width = tab.evaluate("document.documentElement.scrollWidth")
    assert width <= tab.viewport_size["width"], f"page is {width}px wide"


def test_overview_shows_the_figures_and_the_chart(page, relay, traffic, shot):
    page.goto("/dashboard/")
    assert page.locator("h1").inner_text() == "Overview"
    assert page.locator(".card").count() == 6
    assert page.locator(".chart polyline").count() == 4
    assert page.locator(".legend .l-delivered b").inner_text() != "0"
    shot(page, "overview")
    page.get_by_role("link", name="24h").click()
    page.wait_for_url(re.compile(r"window=24h"))
    assert page.locator(".chart rect.slot").count() == 24


def test_filter_the_messages(page, relay, traffic, shot):
    page.goto("/dashboard/messages")
    shot(page, "messages")
    page.select_option("select[name=status]", "delivered")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"status=delivered"))
    badges = page.locator("#live tbody .badge").all_inner_texts()
    assert len(badges) >= 6 and set(badges) == {"delivered"}
    assert page.locator("select[name=status]").input_value() == "delivered"
    shot(page, "messages-filtered")


def test_search_by_carrier_id_opens_the_message(page, relay, shot):
    cid = carrier_id()
    message_id = relay.add(status="sent", carrier_message_id=cid, accepted_at=utcnow())
    page.goto("/dashboard/")
    page.get_by_role("searchbox").fill(cid)
    page.get_by_role("searchbox").press("Enter")
    page.wait_for_url(f"**/dashboard/messages/{message_id}")
    assert message_id in page.locator("h1").inner_text()
    assert cid in page.locator(".fields").inner_text()


def test_open_a_message_from_the_list(page, relay, shot):
    mine = number()
    cid = carrier_id()
    message_id = relay.add(
        status="accepted",
        carrier_message_id=cid,
        to_number=mine,
        accepted_at=utcnow(),
        tag="invoice-42",
    )
    relay.callback(cid, to=mine)
    relay.callback(
        cid,
        to=mine,
        deliveryState="delivered",
        deliveryCode=0,
        deliveryDescription="Message delivered to carrier",
        via="fallback",
    )
    page.goto(f"/dashboard/messages?number={quote(mine)}")
    page.locator(f'tr[data-id="{message_id}"] a').first.click()
    page.wait_for_url(f"**/dashboard/messages/{message_id}")
    rows = page.locator("#timeline tr.event")
    assert rows.count() == 2
    assert "applied → delivered" in rows.nth(1).inner_text()
    assert "fallback" in rows.nth(1).inner_text()
    shot(page, "message")


def test_timeline_updates_live_without_a_reload(page, relay):
    cid = carrier_id()
    message_id = relay.add(status="accepted", carrier_message_id=cid, accepted_at=utcnow())
    page.goto(f"/dashboard/messages/{message_id}")
    page.evaluate("window.__marker = 'same page'; window.scrollTo(0, 120)")
    rows = page.locator("#timeline tr.event")
    assert rows.count() == 0

    relay.callback(cid)
    rows.first.wait_for()  # the refresh script swapped the fragment in
    assert "applied → sent" in rows.first.inner_text()
    assert page.evaluate("window.__marker") == "same page"
    assert page.evaluate("window.scrollY") == 120

    # Typing in a form holds the refresh back, so nothing moves under the user's hands.
    page.get_by_role("searchbox").fill("order-")
    relay.callback(cid, deliveryState="delivered", deliveryCode=0)
    page.wait_for_timeout(2500)
    assert rows.count() == 1 and "paused" in page.locator("#live-status").inner_text()
    page.get_by_role("searchbox").blur()
    rows.nth(1).wait_for()
    assert "applied → delivered" in rows.nth(1).inner_text()
    assert page.get_by_role("searchbox").input_value() == "order-"
    assert page.evaluate("window.__marker") == "same page"
    assert page.url.endswith(f"/dashboard/messages/{message_id}")


def test_events_page(page, relay, traffic, shot):
    page.goto("/dashboard/events")
    assert page.locator("#live tbody tr").count() >= 1
    page.check("input[name=unmatched]")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"unmatched=1"))
    assert page.locator("#live tbody .f-warn").count() >= 1
    shot(page, "events")


def test_xss_in_message_data_never_runs(page, relay, shot):
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    mine = number()
    cid = carrier_id()
    message_id = relay.add(
        status="sent",
        carrier_message_id=cid,
        text=XSS_TEXT,
        tag=XSS_TAG,
        from_number=mine,
        accepted_at=utcnow(),
    )
    relay.callback(
        cid,
        text=XSS_TEXT,
        tag=XSS_TAG,
        deliveryState="not-delivered",
        deliveryCode=720,
        deliveryDescription=XSS_TEXT,
    )
    for url in (
        f"/dashboard/messages?number={quote(mine)}",
        f"/dashboard/messages/{message_id}",
        f"/dashboard/events?carrier={cid}",
    ):
        page.goto(url)
        page.wait_for_timeout(1300)  # let one live refresh swap the fragment in, too
        assert page.evaluate("window.__xss") is None
        assert page.evaluate("window.__csp") == []
    page.goto(f"/dashboard/messages/{message_id}")
    fields = page.locator(".fields").inner_text()
    assert XSS_TEXT in fields and XSS_TAG in fields  # shown as text
    assert page.locator(".fields img").count() == 0
    assert dialogs == []
    shot(page, "message-xss")


@pytest.mark.parametrize(
    "path", ["/dashboard/", "/dashboard/messages", "/dashboard/events", "message"]
)
def test_phone_width_has_no_page_overflow(phone, relay, traffic, shot, path):
    if path == "message":
        path = f"/dashboard/messages/{traffic['delivered'][0]}"
    phone.goto(path)
    no_page_overflow(phone)
    for box in phone.locator(".table-wrap").all():
        right = box.evaluate("el => el.getBoundingClientRect().right")
        assert right <= 390
    name = "phone-" + (path.strip("/").split("/")[-1] if path != "/dashboard/" else "overview")
    shot(phone, name if "rm-" not in name else "phone-message")


def test_phone_table_scrolls_inside_its_box(phone, relay, traffic):
    phone.goto("/dashboard/messages")
    wrap = phone.locator(".table-wrap").first
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")
    wrap.evaluate("el => { el.scrollLeft = 200; }")
    assert wrap.evaluate("el => el.scrollLeft") == 200
    no_page_overflow(phone)
