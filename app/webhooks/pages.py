"""The dashboard's Webhooks page: endpoints, recent and failed deliveries, and Retry.

Its views join the dashboard's blueprint (its credentials, CSRF token, security headers and
live refresh), imported before that blueprint is registered (``register_blueprints``).
"""

from __future__ import annotations

from flask import abort, flash, redirect, url_for
from sqlalchemy import func, select

from ..dashboard import _check_csrf, _render, bp
from ..db_setup import lock_for_write
from ..errors import ApiError
from ..extensions import db
from ..models import utcnow
from .api import retry
from .models import WebhookDelivery, WebhookEndpoint

LISTED = 50  # deliveries per table


@bp.get("/webhooks")
def webhooks():
    """Endpoints with their pending and failed counts; the latest and the failed deliveries."""
    endpoints = db.session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id)).all()
    counts: dict[tuple[str, str], int] = {}
    # Only the two states worth counting: their rows are a prefix of the (status, ...) index.
    for endpoint_id, status, count in db.session.execute(
        select(WebhookDelivery.endpoint_id, WebhookDelivery.status, func.count())
        .where(WebhookDelivery.status.in_(("pending", "failed")))
        .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.status)
    ):
        counts[endpoint_id, status] = count
    newest = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(LISTED)
    return _render(
        "webhooks",
        endpoints=endpoints,
        counts=counts,
        recent=db.session.scalars(newest).all(),
        failed=db.session.scalars(newest.where(WebhookDelivery.status == "failed")).all(),
    )


@bp.post("/webhooks/<webhook_id>/deliveries/<delivery_id>/retry")
def retry_delivery(webhook_id, delivery_id):
    """Send a delivery again now (a fresh retry schedule, the same webhook-id)."""
    _check_csrf()
    lock_for_write(db.session)
    try:
        delivery = retry(db.session, webhook_id, delivery_id, utcnow())
    except ApiError as err:
        abort(404, err.message)
    db.session.commit()
    flash(f"Delivery {delivery.id} ({delivery.type}) will be sent again now.", "ok")
    return redirect(url_for(".webhooks"), 303)
