"""The REST API under /api: send, status, events, stats, reconcile (Bearer auth)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from flask import current_app, jsonify, request, url_for
from flask_smorest import Blueprint
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from . import messaging, queries
from .errors import ApiError, read_body
from .extensions import db
from .metrics import API_MESSAGES
from .models import CallbackEvent, IdempotencyKey, Message
from .reconcile import find_message, reconcile
from .schemas import (
    BatchItemSchema,
    CatapultErrorSchema,
    EventPageSchema,
    EventQuerySchema,
    MessageDetailSchema,
    MessagePageSchema,
    MessageQuerySchema,
    MessageSchema,
    SendRequestSchema,
    StatsQuerySchema,
    StatsSchema,
)
from .send_rules import SendRuleError, validate_batch, validate_message

bp = Blueprint("api", __name__, url_prefix="/api", description="Send messages and follow them")

message_schema = MessageSchema()
detail_schema = MessageDetailSchema()


@bp.before_request
def require_bearer():
    """Every /api route needs ``Authorization: Bearer <one of API_KEYS>``."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        for key in current_app.config["API_KEYS"]:
            if hmac.compare_digest(token.strip().encode(), key.encode()):
                request.environ["relay.api_key"] = key
                return None
    raise ApiError(
        401,
        "authentication",
        "unauthorized",
        "A valid 'Authorization: Bearer <API key>' header is required.",
        headers={"WWW-Authenticate": 'Bearer realm="api"'},
    )


# ---------------------------------------------------------------- send


def _read_body():
    if not request.is_json:
        raise ApiError(
            400,
            "bad-request",
            "unsupported-media-type",
            "Send the message as JSON with 'Content-Type: application/json'.",
        )
    raw = read_body(current_app.config["MAX_BODY_BYTES"])
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400, "bad-request", "invalid-json", f"The request body is not valid JSON: {exc}"
        ) from None


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 200:
        raise ApiError(
            400,
            "bad-request",
            "validation-error",
            "Idempotency-Key must be 1 to 200 characters.",
        )
    # Scoped per API key, so two clients cannot see each other's answers.
    owner = hashlib.sha256(request.environ["relay.api_key"].encode()).hexdigest()[:16]
    return f"{owner}:{key}"


def _replay(row: IdempotencyKey, request_hash: str):
    if row.request_hash != request_hash:
        raise ApiError(
            422,
            "bad-request",
            "idempotency-key-reused",
            "This Idempotency-Key was already used with a different request body.",
        )
    response = jsonify(row.body)
    response.status_code = row.status_code
    if row.location:
        response.headers["Location"] = row.location
    response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/messages")
@bp.doc(
    summary="Send one message (201) or a batch of up to 50 (202)",
    requestBody={
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/SendRequest"},
                        {
                            "type": "array",
                            "maxItems": 50,
                            "items": {"$ref": "#/components/schemas/SendRequest"},
                        },
                    ]
                }
            }
        },
    },
    parameters=[{"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}}],
)
@bp.alt_response(201, schema=MessageSchema, description="One message queued")
@bp.alt_response(202, schema=BatchItemSchema(many=True), description="Batch: per-item results")
@bp.alt_response(400, schema=CatapultErrorSchema, description="Invalid message")
@bp.alt_response(403, schema=CatapultErrorSchema, description="More than 50 messages")
def send_messages():
    """Queue messages for sending through Catapult; the relay owns the callback URLs."""
    body = _read_body()
    key = _idempotency_key()
    request_hash = hashlib.sha256(request.get_data(cache=True)).hexdigest()
    if key is not None:
        messaging.lock_for_write(db.session)
        row = db.session.get(IdempotencyKey, key)
        if row is not None:
            return _replay(row, request_hash)
    status, payload, location = _enqueue(body)
    if key is not None:
        db.session.add(
            IdempotencyKey(
                key=key,
                request_hash=request_hash,
                status_code=status,
                body=payload,
                location=location,
            )
        )
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent request with the same key committed first: answer as it did.
        db.session.rollback()
        return _replay(db.session.get(IdempotencyKey, key), request_hash)
    response = jsonify(payload)
    response.status_code = status
    if location:
        response.headers["Location"] = location
    return response


def _enqueue(body):
    """Validate everything before anything is queued; returns (status, body, location)."""
    if isinstance(body, list):
        results = validate_batch(body)
        valid = [r for r in results if not isinstance(r, SendRuleError)]
        created = iter(messaging.enqueue(db.session, valid))
        items = []
        for result in results:
            if isinstance(result, SendRuleError):
                items.append({"result": "error", "error": result.to_dict()})
            else:
                message = next(created)
                items.append(
                    {"result": "accepted", "id": message.id, "location": _location(message.id)}
                )
        API_MESSAGES.inc(len(valid))
        return 202, items, None
    message = messaging.enqueue(db.session, [validate_message(body)])[0]
    db.session.flush()
    API_MESSAGES.inc()
    return 201, message_schema.dump(message), _location(message.id)


def _location(message_id: str) -> str:
    return url_for("api.get_message", message_id=message_id)


# ---------------------------------------------------------------- status


def _find_message(message_id: str) -> Message:
    return find_message(db.session, message_id)


def _detail(message: Message) -> dict:
    data = detail_schema.dump(message)
    events = db.session.scalars(
        select(CallbackEvent)
        .where(CallbackEvent.message_id == message.id)
        .order_by(CallbackEvent.id)
    ).all()
    data["events"] = queries.event_schema.dump(events, many=True)
    return data


@bp.get("/messages")
@bp.arguments(MessageQuerySchema, location="query", as_kwargs=True)
@bp.response(200, MessagePageSchema)
def list_messages(limit, cursor=None, **filters):
    """List messages, newest first, with filters and an opaque cursor."""
    after = _decode_cursor(cursor)
    items = queries.list_messages(db.session, filters, limit + 1, after)
    return _page(items, limit, lambda m: m.id, "api.list_messages", message_schema)


@bp.get("/messages/<message_id>")
@bp.response(200, MessageDetailSchema)
@bp.alt_response(404, schema=CatapultErrorSchema)
def get_message(message_id):
    """One message by relay id or carrier id ``m-...``, with its event timeline."""
    return jsonify(_detail(_find_message(message_id)))


@bp.post("/messages/<message_id>/reconcile")
@bp.response(200, MessageDetailSchema)
@bp.alt_response(409, schema=CatapultErrorSchema)
def reconcile_message(message_id):
    """Ask the carrier for the message now; its answer is stored as a ``reconcile`` event."""
    from .catapult import client_for

    message = reconcile(db.session, client_for(current_app), message_id)
    db.session.commit()
    return jsonify(_detail(message))


@bp.get("/events")
@bp.arguments(EventQuerySchema, location="query", as_kwargs=True)
@bp.response(200, EventPageSchema)
def list_events(limit, cursor=None, **filters):
    """The raw callback log, newest first; ``matched=false`` lists parked and unknown events."""
    after = _decode_cursor(cursor, integer=True)
    items = queries.list_events(db.session, filters, limit + 1, after)
    return _page(items, limit, lambda e: e.id, "api.list_events", queries.event_schema)


@bp.get("/stats")
@bp.arguments(StatsQuerySchema, location="query", as_kwargs=True)
@bp.response(200, StatsSchema)
def stats(since=None):
    """Counts per status, delivery rate, time to receipt, fallback share, unmatched, duplicates."""
    return jsonify(queries.stats(db.session, since))


# ---------------------------------------------------------------- paging


def _decode_cursor(cursor: str | None, integer: bool = False):
    if not cursor:
        return None
    try:
        padded = cursor.encode() + b"=" * (-len(cursor) % 4)
        value = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        return int(value) if integer else value
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "bad-request", "validation-error", "Invalid cursor.") from None


def _page(items, limit, key, endpoint, schema):
    next_url = None
    if len(items) > limit:
        items = items[:limit]
        cursor = base64.urlsafe_b64encode(str(key(items[-1])).encode()).decode().rstrip("=")
        args = {k: v for k, v in request.args.items() if k != "cursor"}
        next_url = url_for(endpoint, _external=True, **args, cursor=cursor)
    return jsonify({"items": schema.dump(items, many=True), "next": next_url})


# Register the request body schema for the OpenAPI document.
def register_openapi_components(api) -> None:
    """Name the send body schema in the OpenAPI components."""
    api.spec.components.schema("SendRequest", schema=SendRequestSchema)
