"""Marshmallow schemas for the API's resources and query arguments (OpenAPI is built from them).

The send rules live in ``send_rules.py``; these describe what the relay answers.
"""

from __future__ import annotations

from datetime import UTC

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from .models import STATUSES


class CatapultErrorSchema(Schema):
    """Catapult's error shape, used for every error the API answers."""

    category = fields.String(required=True)
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.List(fields.Dict(), required=True)


class CarrierErrorSchema(Schema):
    category = fields.String()
    code = fields.String()
    message = fields.String()


class EventSchema(Schema):
    """One stored callback event (or reconcile answer), with what it did to its message."""

    id = fields.Integer()
    receivedAt = fields.DateTime(attribute="received_at")
    via = fields.String(metadata={"enum": ["primary", "fallback", "reconcile"]})
    method = fields.String()
    messageId = fields.String(attribute="message_id", allow_none=True)
    carrierMessageId = fields.String(attribute="carrier_message_id", allow_none=True)
    tag = fields.String(allow_none=True)
    eventType = fields.String(attribute="event_type", allow_none=True)
    direction = fields.String(allow_none=True)
    state = fields.String(allow_none=True)
    deliveryState = fields.String(attribute="delivery_state", allow_none=True)
    deliveryCode = fields.Integer(attribute="delivery_code", allow_none=True)
    applied = fields.Boolean()
    statusAfter = fields.String(attribute="status_after", allow_none=True)
    duplicate = fields.Boolean()
    late = fields.Boolean()
    parked = fields.Boolean()
    attachedAt = fields.DateTime(attribute="attached_at", allow_none=True)
    unparseable = fields.Boolean()
    codeMismatch = fields.Boolean(attribute="code_mismatch")
    contentType = fields.String(attribute="content_type", allow_none=True)
    userAgent = fields.String(attribute="user_agent", allow_none=True)
    payload = fields.Dict(allow_none=True)
    raw = fields.String()


class MessageSchema(Schema):
    """The message resource (camelCase, like Catapult's)."""

    id = fields.String()
    direction = fields.String(metadata={"enum": ["out", "in"]})
    from_ = fields.String(attribute="from_number", data_key="from")
    to = fields.String(attribute="to_number")
    text = fields.String(allow_none=True)
    media = fields.List(fields.String(), allow_none=True)
    tag = fields.String(allow_none=True)
    receiptRequested = fields.String(attribute="receipt_requested", allow_none=True)
    callbackHttpMethod = fields.String(attribute="callback_http_method")
    status = fields.String(metadata={"enum": list(STATUSES)})
    carrierMessageId = fields.String(attribute="carrier_message_id", allow_none=True)
    state = fields.String(allow_none=True)
    deliveryState = fields.String(attribute="delivery_state", allow_none=True)
    deliveryCode = fields.Integer(attribute="delivery_code", allow_none=True)
    deliveryDescription = fields.String(attribute="delivery_description", allow_none=True)
    segmentCount = fields.Integer(attribute="segment_count", allow_none=True)
    error = fields.Nested(CarrierErrorSchema, allow_none=True)
    codeMismatch = fields.Boolean(attribute="code_mismatch")
    createdAt = fields.DateTime(attribute="created_at")
    updatedAt = fields.DateTime(attribute="updated_at")
    acceptedAt = fields.DateTime(attribute="accepted_at", allow_none=True)
    finalAt = fields.DateTime(attribute="final_at", allow_none=True)


class MessageDetailSchema(MessageSchema):
    """The message with its whole event timeline and the last carrier exchange."""

    events = fields.List(fields.Nested(EventSchema))
    carrierRequest = fields.Dict(attribute="carrier_request", allow_none=True)
    carrierResponse = fields.Dict(attribute="carrier_response", allow_none=True)
    attempts = fields.Integer()


class MessagePageSchema(Schema):
    items = fields.List(fields.Nested(MessageSchema))
    next = fields.String(allow_none=True)


class EventPageSchema(Schema):
    items = fields.List(fields.Nested(EventSchema))
    next = fields.String(allow_none=True)


class BatchItemSchema(Schema):
    result = fields.String(metadata={"enum": ["accepted", "error"]})
    id = fields.String()
    location = fields.String()
    error = fields.Nested(CatapultErrorSchema)


class SendRequestSchema(Schema):
    """One message to send (documentation of the body; the rules are in ``send_rules``)."""

    class Meta:
        unknown = RAISE

    from_ = fields.String(data_key="from", required=True, metadata={"example": "+19195551212"})
    to = fields.String(required=True, metadata={"example": "+19195551313"})
    text = fields.String(metadata={"maxLength": 2048})
    media = fields.Raw(metadata={"description": "a URL or a list of URLs"})
    receiptRequested = fields.String(metadata={"enum": ["none", "all", "error"]})
    callbackHttpMethod = fields.String(metadata={"enum": ["GET", "POST"]})
    callbackTimeout = fields.Raw(metadata={"description": "1..10000 ms, number or string"})
    tag = fields.String()


class ListArgsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    cursor = fields.String()


class MessageQuerySchema(ListArgsSchema):
    """Filters for ``GET /api/messages``."""

    status = fields.String(validate=validate.OneOf(STATUSES))
    direction = fields.String(validate=validate.OneOf(["out", "in"]))
    tag = fields.String()
    from_ = fields.String(data_key="from")
    to = fields.String()
    since = fields.AwareDateTime(default_timezone=UTC)
    until = fields.AwareDateTime(default_timezone=UTC)


class EventQuerySchema(ListArgsSchema):
    """Filters for ``GET /api/events``."""

    matched = fields.Boolean()
    via = fields.String(validate=validate.OneOf(["primary", "fallback", "reconcile"]))
    carrierMessageId = fields.String()
    since = fields.AwareDateTime(default_timezone=UTC)


class StatsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    since = fields.AwareDateTime(default_timezone=UTC)


class StatsSchema(Schema):
    """Counts and rates over messages created since ``since`` (all time when absent)."""

    since = fields.DateTime(allow_none=True)
    total = fields.Integer()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    deliveryRate = fields.Float(allow_none=True)
    timeToReceipt = fields.Dict(metadata={"description": "p50/p95 seconds"})
    events = fields.Dict(keys=fields.String(), values=fields.Raw())
