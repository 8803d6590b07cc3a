"""The REST API under /api: send, status, events, stats, reconcile (Bearer auth)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re

from flask import current_app, jsonify, request, url_for
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from . import messaging, queries
from .errors import ApiError, read_body
from .events import INT32
from .extensions import db
from .metrics import API_MESSAGES
from .models import CallbackEvent, IdempotencyKey, Message
from .openapi import IDEMPOTENCY_KEY, MESSAGE_ID, SEND_DOC, ApiBlueprint
from .reconcile import find_message, reconcile
from .schemas import (
    EventPageSchema,
    EventQuerySchema,
    MessageDetailSchema,
    MessagePageSchema,
    MessageQuerySchema,
    MessageSchema,
    StatsQuerySchema,
    StatsSchema,
)
from .security import auth_failed, bearer_failure
from .send_rules import SendRuleError, validate_batch, validate_message

bp = ApiBlueprint("api", __name__, url_prefix="/api", description="Send messages and follow them")

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY)
message_schema = MessageSchema()
detail_schema = MessageDetailSchema()


@bp.before_request
def require_bearer():
    """Every /api route needs ``Authorization: Bearer <one of API_KEYS>``.

    The token is compared with every key, each as a SHA-256 digest, so neither the time taken
    nor its length tells how much of it, or which key, came close."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        found = None
        for key in current_app.config["API_KEYS"]:
            if hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest()):
                found = key
        if found is not None:
            request.environ["relay.api_key"] = found
            return None
    auth_failed("api", bearer_failure(header))
    raise ApiError(
        401,
        "authentication",
        "unauthorized",
        "A valid 'Authorization: Bearer <API key>' header is required.",
        headers={"WWW-Authenticate": 'Bearer realm="api"'},
    )


# ---------------------------------------------------------------- send


def read_json():
    """The request's JSON body: 415 unless labelled JSON, 400 unless it parses."""
    if not request.is_json:
        raise ApiError(
            415,
            "bad-request",
            "unsupported-media-type",
            "Send the message as JSON with 'Content-Type: application/json'.",
        )
    raw = read_body(current_app.config["MAX_BODY_BYTES"])
    try:
        return json.loads(raw)
    except RecursionError:  # nested deeper than the parser goes: no message is
        raise ApiError(
            400, "bad-request", "invalid-json", "The request body is nested too deeply."
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400, "bad-request", "invalid-json", f"The request body is not valid JSON: {exc}"
        ) from None


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key.strip(" \t")):
        raise ApiError(
            400,
            "bad-request",
            "validation-error",
            "Idempotency-Key must be 1 to 200 printable ASCII characters.",
        )
    key = key.strip(" \t")
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
@bp.doc(**SEND_DOC)
@bp.alt_response(201, schema=MessageSchema, description="One message, queued.")
@bp.alt_response(
    202,
    schema={"type": "array", "items": {"$ref": "#/components/schemas/BatchResult"}},
    description="A batch: one result per item, in request order (accepted, or its error).",
)
@bp.errors(400, 403, 415, 422)
def send_messages():
    """Queue messages for sending through Catapult; the relay owns the callback URLs."""
    body = read_json()
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
@bp.doc(
    operationId="listMessages",
    responses={
        200: {
            "links": {
                "GetFirstMessage": {
                    "operationId": "getMessage",
                    "parameters": {"message_id": "$response.body#/items/0/id"},
                },
                "ReconcileFirstMessage": {
                    "operationId": "reconcileMessage",
                    "parameters": {"message_id": "$response.body#/items/0/id"},
                },
            }
        }
    },
)
@bp.query(MessageQuerySchema)
@bp.response(200, MessagePageSchema)
def list_messages(limit, cursor=None, **filters):
    """List messages, newest first, with filters and an opaque cursor."""
    items = queries.list_messages(db.session, filters, limit + 1, cursor)
    return _page(items, limit, lambda m: m.id, "api.list_messages", message_schema)


@bp.get("/messages/<message_id>", parameters=[MESSAGE_ID])
@bp.doc(operationId="getMessage")
@bp.response(200, MessageDetailSchema)
@bp.errors(404)
def get_message(message_id):
    """One message by relay id or carrier id ``m-...``, with its event timeline."""
    return jsonify(_detail(_find_message(message_id)))


@bp.post("/messages/<message_id>/reconcile", parameters=[MESSAGE_ID])
@bp.doc(operationId="reconcileMessage")
@bp.response(200, MessageDetailSchema)
@bp.errors(404, 409, 502)
def reconcile_message(message_id):
    """Ask the carrier for the message now; its answer is stored as a ``reconcile`` event."""
    from .catapult import client_for

    message = reconcile(db.session, client_for(current_app), message_id)
    db.session.commit()
    return jsonify(_detail(message))


@bp.get("/events")
@bp.doc(operationId="listEvents")
@bp.query(EventQuerySchema)
@bp.response(200, EventPageSchema)
def list_events(limit, cursor=None, **filters):
    """The raw callback log, newest first; ``matched=false`` lists parked and unknown events."""
    after = int(cursor) if cursor else None
    if after is not None and after > INT32:
        after = None  # above every id the (32-bit) column can hold: no bound
    items = queries.list_events(db.session, filters, limit + 1, after)
    return _page(items, limit, lambda e: e.id, "api.list_events", queries.event_schema)


@bp.get("/stats")
@bp.doc(operationId="getStats")
@bp.query(StatsQuerySchema)
@bp.response(200, StatsSchema)
def stats(since=None):
    """Counts per status, delivery rate, time to receipt, fallback share, unmatched, duplicates."""
    return jsonify(queries.stats(db.session, since))


# ---------------------------------------------------------------- paging


def _page(items, limit, key, endpoint, schema):
    """A page of ``limit`` items (``items`` holds one more when there is a next page); the
    cursor of the next page is the last item's id."""
    next_url = None
    if len(items) > limit:
        items = items[:limit]
        args = {k: v for k, v in request.args.items() if k != "cursor"}
        next_url = url_for(endpoint, _external=True, **args, cursor=str(key(items[-1])))
    return jsonify({"items": schema.dump(items, many=True), "next": next_url})
