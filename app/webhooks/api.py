"""``/api/webhooks``: the user's endpoints for onward notifications, and their deliveries."""

from __future__ import annotations

import base64
import secrets

from flask import current_app, url_for
from marshmallow import ValidationError
from sqlalchemy import select

from ..api import read_json, require_bearer
from ..db_setup import lock_for_write
from ..errors import ApiError
from ..events import INT32
from ..extensions import db
from ..models import utcnow
from ..openapi import ApiBlueprint
from . import urls
from .models import ALL_EVENTS, WebhookDelivery, WebhookEndpoint, new_endpoint_id
from .outbox import lock_endpoints
from .schemas import (
    DeliveryPageSchema,
    DeliveryQuerySchema,
    DeliverySchema,
    WebhookCreateSchema,
    WebhookPageSchema,
    WebhookQuerySchema,
    WebhookSchema,
    WebhookUpdateSchema,
)

bp = ApiBlueprint(
    "webhooks",
    __name__,
    url_prefix="/api",
    description="Onward notifications: every status change, signed, to your own endpoints",
)
bp.before_request(require_bearer)

create_schema, update_schema = WebhookCreateSchema(), WebhookUpdateSchema()

WEBHOOK_ID = {
    "in": "path",
    "name": "webhook_id",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
DELIVERY_ID = {
    "in": "path",
    "name": "delivery_id",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
}
URL_REFUSED = {
    "description": "The URL is well formed but may not be called: its host does not resolve, or "
    "resolves to a loopback, link-local, private or otherwise non-public address "
    "(`WEBHOOK_ALLOW_PRIVATE=1` allows those on a local run). Nothing was saved.",
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/CatapultError"},
            "examples": {
                "url-refused": {
                    "value": {
                        "category": "bad-request",
                        "code": "url-refused",
                        "message": "the host 'localhost' resolves to 127.0.0.1, a loopback "
                        "address: refused",
                        "details": [{"name": "url", "value": "http://localhost:8080/hook"}],
                    }
                }
            },
        }
    },
}


def _body(schema) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _load(schema) -> dict:
    try:
        return schema.load(read_json())
    except ValidationError as err:
        problems = err.messages if isinstance(err.messages, dict) else {"_schema": err.messages}
        details = [{"name": name, "value": str(text)} for name, text in problems.items()]
        raise ApiError(
            400,
            "bad-request",
            "validation-error",
            "Invalid request body: " + ", ".join(d["name"] for d in details),
            details,
        ) from None


def _checked_url(url: str) -> str:
    try:
        urls.check(url, current_app.config["WEBHOOK_ALLOW_PRIVATE"])
    except urls.UrlRefused as exc:
        raise ApiError(
            422, "bad-request", "url-refused", str(exc), [{"name": "url", "value": url}]
        ) from None
    return url


def _events(events: list[str]) -> list[str]:
    """Each type once, in the order given; ``*`` alone stands for every type."""
    return [ALL_EVENTS] if ALL_EVENTS in events else list(dict.fromkeys(events))


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _endpoint(webhook_id: str, for_update: bool = False) -> WebhookEndpoint:
    found = None
    if "\x00" not in webhook_id:  # no id holds one, and PostgreSQL refuses to compare it
        found = db.session.get(WebhookEndpoint, webhook_id, with_for_update=for_update)
    if found is None:
        raise ApiError(404, "not-found", "webhook-not-found", f"No webhook '{webhook_id}'.")
    return found


def _write_lock() -> None:
    """Endpoint writes are serialized with the transactions that read subscriptions."""
    lock_for_write(db.session)
    lock_endpoints(db.session)


@bp.post("/webhooks")
@bp.doc(operationId="createWebhook", requestBody=_body(WebhookCreateSchema))
@bp.doc(responses={422: URL_REFUSED})
@bp.response(201, WebhookSchema)
@bp.errors(400, 415)
def create_webhook():
    """Subscribe an endpoint to notifications; the answer holds its signing secret."""
    data = _load(create_schema)
    url = _checked_url(data["url"])
    _write_lock()
    now = utcnow()
    endpoint = WebhookEndpoint(
        id=new_endpoint_id(),
        url=url,
        description=data.get("description"),
        events=_events(data["events"]),
        secret=new_secret(),
        enabled=True,
        created_at=now,
        updated_at=now,
    )
    db.session.add(endpoint)
    db.session.commit()
    return endpoint, 201


@bp.get("/webhooks")
@bp.doc(operationId="listWebhooks")
@bp.query(WebhookQuerySchema)
@bp.response(200, WebhookPageSchema)
def list_webhooks(limit, cursor=None):
    """Your endpoints, newest first."""
    stmt = select(WebhookEndpoint).order_by(WebhookEndpoint.id.desc()).limit(limit + 1)
    if cursor:
        stmt = stmt.where(WebhookEndpoint.id < cursor)
    return _page(db.session.scalars(stmt).all(), limit, "webhooks.list_webhooks")


@bp.get("/webhooks/<webhook_id>", parameters=[WEBHOOK_ID])
@bp.doc(operationId="getWebhook")
@bp.response(200, WebhookSchema)
@bp.errors(404)
def get_webhook(webhook_id):
    """One endpoint, with its signing secret."""
    return _endpoint(webhook_id)


@bp.patch("/webhooks/<webhook_id>", parameters=[WEBHOOK_ID])
@bp.doc(operationId="updateWebhook", requestBody=_body(WebhookUpdateSchema))
@bp.doc(responses={422: URL_REFUSED})
@bp.response(200, WebhookSchema)
@bp.errors(400, 404, 415)
def update_webhook(webhook_id):
    """Change an endpoint's URL, event types, description or state; rotate its secret."""
    data = _load(update_schema)
    if "url" in data:
        _checked_url(data["url"])
    _write_lock()
    endpoint = _endpoint(webhook_id, for_update=True)
    for name in ("url", "description", "enabled"):
        if name in data:
            setattr(endpoint, name, data[name])
    if "events" in data:
        endpoint.events = _events(data["events"])
    if data.get("rotateSecret"):
        endpoint.secret = new_secret()
    endpoint.updated_at = utcnow()
    db.session.commit()
    return endpoint


@bp.delete("/webhooks/<webhook_id>", parameters=[WEBHOOK_ID])
@bp.doc(operationId="deleteWebhook")
@bp.response(204)
@bp.errors(404)
def delete_webhook(webhook_id):
    """Delete an endpoint and its deliveries (pending ones are not sent)."""
    _write_lock()
    endpoint = _endpoint(webhook_id, for_update=True)
    db.session.execute(
        WebhookDelivery.__table__.delete().where(WebhookDelivery.endpoint_id == endpoint.id)
    )
    db.session.delete(endpoint)
    db.session.commit()
    return "", 204


@bp.get("/webhooks/<webhook_id>/deliveries", parameters=[WEBHOOK_ID])
@bp.doc(operationId="listWebhookDeliveries")
@bp.query(DeliveryQuerySchema)
@bp.response(200, DeliveryPageSchema)
@bp.errors(404)
def list_deliveries(webhook_id, limit, cursor=None, status=None):
    """Every notification to this endpoint, newest first, with each attempt made."""
    endpoint = _endpoint(webhook_id)
    stmt = (
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        stmt = stmt.where(WebhookDelivery.id < cursor)
    if status:
        stmt = stmt.where(WebhookDelivery.status == status)
    items = db.session.scalars(stmt).all()
    return _page(items, limit, "webhooks.list_deliveries", webhook_id=webhook_id)


@bp.post(
    "/webhooks/<webhook_id>/deliveries/<delivery_id>/retry", parameters=[WEBHOOK_ID, DELIVERY_ID]
)
@bp.doc(operationId="retryWebhookDelivery")
@bp.response(202, DeliverySchema)
@bp.errors(404)
def retry_delivery(webhook_id, delivery_id):
    """Send a notification again now, whatever became of it, with a fresh retry schedule."""
    lock_for_write(db.session)
    delivery = retry(db.session, webhook_id, delivery_id, utcnow())
    db.session.commit()
    return delivery, 202


def retry(session, webhook_id: str, delivery_id: str, now) -> WebhookDelivery:
    """Make a delivery pending and due now, its schedule started over (same ``webhook-id``);
    404 unless it is this endpoint's. The caller holds the write lock and commits."""
    found = None
    if delivery_id.isascii() and delivery_id.isdigit() and 0 < int(delivery_id) <= INT32:
        found = session.get(WebhookDelivery, int(delivery_id), with_for_update=True)
    if found is None or found.endpoint_id != webhook_id:
        raise ApiError(
            404,
            "not-found",
            "delivery-not-found",
            f"No delivery '{delivery_id}' of webhook '{webhook_id}'.",
        )
    found.status, found.step, found.next_attempt_at = "pending", 0, now
    found.claimed_by = found.claimed_until = found.finished_at = None
    return found


def _page(items, limit, endpoint, **args):
    """A page of ``limit`` items (``items`` holds one more when there is a next page), for
    the response schema to dump."""
    next_url = None
    if len(items) > limit:
        items = items[:limit]
        next_url = url_for(endpoint, _external=True, limit=limit, cursor=items[-1].id, **args)
    return {"items": items, "next": next_url}
