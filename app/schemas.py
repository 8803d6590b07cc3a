"""Marshmallow schemas for the API's resources and query arguments (OpenAPI is built from them).

The send rules live in ``send_rules.py``; these describe what the relay answers.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from .fields import Digits, Matching, QueryBoolean, Timestamp, query_text
from .models import STATUSES
from .send_rules import CALLBACK_METHODS, RECEIPT_VALUES

# Cursors, taken from a ``next`` link: the last relay id, or the last event id, of a page.
MESSAGE_CURSOR = "[0-9A-Za-z_-]{1,64}"
EVENT_CURSOR = "[0-9]{1,18}"


def always_present(schema: type[Schema]) -> type[Schema]:
    """Document every field of an answer as required: the relay always sends each of them
    (``null`` where it has no value), so a client may rely on the key."""
    for field in schema._declared_fields.values():
        field.required = True
    return schema


@always_present
class CatapultErrorDetailSchema(Schema):
    """One ``{name, value}`` pair of an error's details."""

    name = fields.String(metadata={"example": "requestPath"})
    value = fields.String(metadata={"example": "api/messages"})


@always_present
class CatapultErrorSchema(Schema):
    """Catapult's error shape (catapult-v1.md §1), used for every error the relay answers."""

    category = fields.String(metadata={"example": "bad-request"})
    code = fields.String(metadata={"example": "validation-error"})
    message = fields.String(metadata={"example": "Invalid query parameters: limit"})
    details = fields.List(fields.Nested(CatapultErrorDetailSchema))


@always_present
class CarrierErrorSchema(Schema):
    """What went wrong with a message, in the carrier's words (or the relay's)."""

    category = fields.String()
    code = fields.String()
    message = fields.String()


RELAY_ID = "rm-[0-9a-z]{26}"
# The document's example ids (tests/test_openapi.py seeds messages with exactly these).
EXAMPLE_RELAY_ID = "rm-01m8t0afj5s3hnn1wyjt14pxdy"
EXAMPLE_CARRIER_ID = "m-dr4mcch2wfb6frcls677glq"
_RELAY_ID = {"pattern": f"^{RELAY_ID}$", "example": EXAMPLE_RELAY_ID}
_CARRIER_ID = {"example": EXAMPLE_CARRIER_ID}


def _enum(*values, nullable: bool = False) -> dict:
    return {"enum": [*values, None] if nullable else list(values)}


@always_present
class EventSchema(Schema):
    """One stored callback event (or reconcile answer), with what it did to its message."""

    id = fields.Integer(metadata={"minimum": 1})
    receivedAt = fields.DateTime(attribute="received_at")
    via = fields.String(metadata=_enum("primary", "fallback", "reconcile"))
    method = fields.String(metadata={"description": "the HTTP method it came with"})
    messageId = fields.String(attribute="message_id", allow_none=True, metadata=_RELAY_ID)
    carrierMessageId = fields.String(
        attribute="carrier_message_id", allow_none=True, metadata=_CARRIER_ID
    )
    tag = fields.String(allow_none=True)
    eventType = fields.String(attribute="event_type", allow_none=True)
    direction = fields.String(allow_none=True)
    state = fields.String(allow_none=True)
    deliveryState = fields.String(attribute="delivery_state", allow_none=True)
    deliveryCode = fields.Integer(attribute="delivery_code", allow_none=True)
    applied = fields.Boolean()
    statusAfter = fields.String(
        attribute="status_after", allow_none=True, metadata=_enum(*STATUSES, nullable=True)
    )
    duplicate = fields.Boolean()
    late = fields.Boolean()
    parked = fields.Boolean()
    attachedAt = fields.DateTime(attribute="attached_at", allow_none=True)
    unparseable = fields.Boolean()
    codeMismatch = fields.Boolean(attribute="code_mismatch")
    contentType = fields.String(attribute="content_type", allow_none=True)
    userAgent = fields.String(attribute="user_agent", allow_none=True)
    payload = fields.Dict(
        allow_none=True,
        metadata={
            "description": "the fields parsed from `raw`: the query parameters of a GET, the "
            "JSON object of a POST; null when it is neither"
        },
    )
    raw = fields.String(metadata={"description": "the query string or body, as received"})


@always_present
class MessageSchema(Schema):
    """The message resource (camelCase, like Catapult's)."""

    id = fields.String(metadata=_RELAY_ID)
    direction = fields.String(metadata=_enum("out", "in"))
    from_ = fields.String(attribute="from_number", data_key="from")
    to = fields.String(attribute="to_number")
    text = fields.String(allow_none=True)
    media = fields.List(fields.String(), allow_none=True)
    tag = fields.String(allow_none=True)
    receiptRequested = fields.String(
        attribute="receipt_requested",
        allow_none=True,
        metadata=_enum(*RECEIPT_VALUES, nullable=True),
    )
    callbackHttpMethod = fields.String(
        attribute="callback_http_method", metadata=_enum(*CALLBACK_METHODS)
    )
    status = fields.String(metadata=_enum(*STATUSES))
    carrierMessageId = fields.String(
        attribute="carrier_message_id", allow_none=True, metadata=_CARRIER_ID
    )
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


@always_present
class MessageDetailSchema(MessageSchema):
    """The message with its whole event timeline and the last carrier exchange."""

    events = fields.List(fields.Nested(EventSchema))
    carrierRequest = fields.Dict(attribute="carrier_request", allow_none=True)
    carrierResponse = fields.Dict(attribute="carrier_response", allow_none=True)
    attempts = fields.Integer(metadata={"minimum": 0})


_NEXT = {"description": "the absolute URL of the next page; null on the last one"}


@always_present
class MessagePageSchema(Schema):
    """A page of messages, newest first."""

    items = fields.List(fields.Nested(MessageSchema))
    next = fields.String(allow_none=True, metadata=_NEXT)


@always_present
class EventPageSchema(Schema):
    """A page of the callback log, newest first."""

    items = fields.List(fields.Nested(EventSchema))
    next = fields.String(allow_none=True, metadata=_NEXT)


class ListArgsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    limit = Digits(
        load_default=50,
        validate=validate.Range(1, 500),
        metadata={"description": "items per page"},
    )


class MessageQuerySchema(ListArgsSchema):
    """Filters for ``GET /api/messages``."""

    cursor = Matching(
        MESSAGE_CURSOR, metadata={"description": "from a `next` link: the page after it"}
    )
    status = fields.String(validate=validate.OneOf(STATUSES))
    direction = fields.String(validate=validate.OneOf(["out", "in"]))
    tag = query_text(metadata={"description": "the whole tag, exactly"})
    from_ = query_text(data_key="from", metadata={"example": "+19195551212"})
    to = query_text(metadata={"example": "+19195551313"})
    since = Timestamp(metadata={"description": "created at or after (RFC 3339, with offset)"})
    until = Timestamp(metadata={"description": "created before (RFC 3339, with offset)"})


class EventQuerySchema(ListArgsSchema):
    """Filters for ``GET /api/events``."""

    cursor = Matching(
        EVENT_CURSOR, metadata={"description": "from a `next` link: the page after it"}
    )
    matched = QueryBoolean(
        metadata={"description": "attached to a message (true), or not (parked, unparseable)"}
    )
    via = fields.String(validate=validate.OneOf(["primary", "fallback", "reconcile"]))
    carrierMessageId = query_text(metadata=_CARRIER_ID)
    since = Timestamp(metadata={"description": "received at or after (RFC 3339, with offset)"})


class StatsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    since = Timestamp(metadata={"description": "messages created (and callbacks received) since"})


@always_present
class TimeToReceiptSchema(Schema):
    """Seconds from carrier acceptance to the final receipt."""

    count = fields.Integer(metadata={"minimum": 0})
    p50 = fields.Float(allow_none=True)
    p95 = fields.Float(allow_none=True)


@always_present
class EventCountsSchema(Schema):
    """Callbacks received in the window."""

    total = fields.Integer(metadata={"minimum": 0})
    viaFallback = fields.Integer(metadata={"minimum": 0})
    fallbackShare = fields.Float(allow_none=True, metadata={"minimum": 0, "maximum": 1})
    unmatched = fields.Integer(metadata={"minimum": 0})
    duplicates = fields.Integer(metadata={"minimum": 0})
    late = fields.Integer(metadata={"minimum": 0})
    unparseable = fields.Integer(metadata={"minimum": 0})


@always_present
class StatsSchema(Schema):
    """Counts and rates over messages created since ``since`` (all time when absent)."""

    since = fields.DateTime(allow_none=True)
    total = fields.Integer(metadata={"minimum": 0})
    counts = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "messages per status (every status, 0 included)"},
    )
    deliveryRate = fields.Float(allow_none=True, metadata={"minimum": 0, "maximum": 1})
    timeToReceipt = fields.Nested(TimeToReceiptSchema)
    events = fields.Nested(EventCountsSchema)
