"""The Webhooks page in a real Chromium: endpoints, failed deliveries, Retry (CSRF), escaping."""

from __future__ import annotations

import json

from sqlalchemy import select

from app.extensions import db
from app.models import utcnow
from app.webhooks.models import WebhookDelivery, WebhookEndpoint

XSS = '<img src=x onerror="window.__xss=1">'


def seed(relay) -> int:
    """An endpoint with a hostile description, and one delivery that failed for good."""
    message_id = relay.add(status="delivered", text=XSS)
    now = utcnow()
    with relay.app.app_context():
        endpoint = WebhookEndpoint(
            url="https://93.184.215.14/hook?x=<b>",
            description=XSS,
            events=["*"],
            secret="whsec_AAAA",
            enabled=True,
        )
        db.session.add(endpoint)
        db.session.flush()
        delivery = WebhookDelivery(
            uid="msg_browser",
            endpoint_id=endpoint.id,
            message_id=message_id,
            type="message.delivered",
            occurred_at=now,
            body=json.dumps({"data": XSS}),
            status="failed",
            attempts=8,
            step=8,
            finished_at=now,
            last_attempt_at=now,
            last_status_code=None,
            last_error=f"could not connect {XSS}",
        )
        db.session.add(delivery)
        db.session.commit()
        return delivery.id


def test_failed_delivery_retried_from_the_page(page, relay, shot):
    delivery_id = seed(relay)
    page.goto("/dashboard/webhooks")
    assert page.locator("h1").inner_text() == "Webhooks"
    assert page.locator("nav a[aria-current=page]").inner_text() == "Webhooks"
    assert XSS in page.locator("#endpoints").inner_text()  # shown as text, never run
    failed = page.locator(f"#h-failed ~ .table-wrap tr[data-delivery-id='{delivery_id}']")
    assert "failed" in failed.inner_text() and f"could not connect {XSS}" in failed.inner_text()
    shot(page, "webhooks")
    failed.locator("button", has_text="Retry").click()
    page.wait_for_url("**/dashboard/webhooks")
    assert "will be sent again now" in page.locator(".flash-ok").inner_text()
    assert page.evaluate("window.__xss") is None
    with relay.app.app_context():
        row = db.session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id))
        assert (row.status, row.step) == ("pending", 0)


def test_retry_without_the_token_is_refused(page, relay):
    delivery_id = seed(relay)
    page.goto("/dashboard/webhooks")
    with relay.app.app_context():
        endpoint_id = db.session.get(WebhookDelivery, delivery_id).endpoint_id
    response = page.request.post(
        f"/dashboard/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry",
        form={"csrf_token": "forged"},
    )
    assert response.status == 400
    with relay.app.app_context():
        assert db.session.get(WebhookDelivery, delivery_id).status == "failed"
