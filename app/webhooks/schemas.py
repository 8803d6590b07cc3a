"""Marshmallow schemas of ``/api/webhooks``: what it takes and what it answers."""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from ..events import storable
from ..fields import Digits, Matching
from ..schemas import ListArgsSchema, always_present
from .models import ALL_EVENTS, DELIVERY_STATES, EVENT_TYPES
from .urls import MAX_URL, URL_PATTERN

ENDPOINT_ID = "wh-[0-9a-z]{26}"
EXAMPLE_ENDPOINT_ID = "wh-01m8t0afj5s3hnn1wyjt14pxdz"
_EVENTS = {
    "description": 'the event types to receive, or `["*"]` for all of them',
    "example": ["message.delivered", "message.not-delivered"],
}
_URL_DOC = {
    "description": "http(s) URL in printable ASCII, no credentials or fragment; its host "
    "must resolve to public addresses only (422 otherwise)",
    "example": "https://hooks.example.com/relay",
}


class StrictBoolean(fields.Boolean):
    """JSON ``true`` or ``false`` only (marshmallow also takes "yes", 1, ...)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def _storable(value: str) -> None:
    if storable(value) != value:
        raise ValidationError("Must not contain NUL or an unpaired surrogate.")


def _url(**kwargs) -> Matching:
    return Matching(URL_PATTERN, validate=validate.Length(max=MAX_URL), metadata=_URL_DOC, **kwargs)


def _events(**kwargs) -> fields.List:
    return fields.List(
        fields.String(validate=validate.OneOf([*EVENT_TYPES, ALL_EVENTS])),
        validate=validate.Length(min=1, max=50),
        metadata=_EVENTS,
        **kwargs,
    )


class _Body(Schema):
    class Meta:
        unknown = RAISE

    description = fields.String(
        allow_none=True,
        validate=[validate.Length(max=1000), _storable],
        metadata={"description": "your own note (no NUL, no unpaired surrogate)"},
    )


class WebhookCreateSchema(_Body):
    """A new endpoint: its URL and the event types it receives."""

    url = _url(required=True)
    events = _events(required=True)


class WebhookUpdateSchema(_Body):
    """Changes to an endpoint; absent fields stay as they are."""

    url = _url()
    events = _events()
    enabled = StrictBoolean(metadata={"description": "false pauses its deliveries (kept)"})
    rotateSecret = StrictBoolean(
        metadata={"description": "true: a new secret signs every attempt from now on"}
    )


@always_present
class WebhookSchema(Schema):
    """An endpoint, with the secret its notifications are signed with."""

    id = fields.String(metadata={"pattern": f"^{ENDPOINT_ID}$", "example": EXAMPLE_ENDPOINT_ID})
    url = fields.String(metadata={"example": _URL_DOC["example"]})
    description = fields.String(allow_none=True)
    events = fields.List(fields.String(), metadata=_EVENTS)
    secret = fields.String(
        metadata={"description": "`whsec_` + base64 of the signing key (Standard Webhooks)"}
    )
    enabled = fields.Boolean()
    createdAt = fields.DateTime(attribute="created_at")
    updatedAt = fields.DateTime(attribute="updated_at")


_NEXT = {"description": "the absolute URL of the next page; null on the last one"}


@always_present
class WebhookPageSchema(Schema):
    """A page of endpoints, newest first."""

    items = fields.List(fields.Nested(WebhookSchema))
    next = fields.String(allow_none=True, metadata=_NEXT)


@always_present
class AttemptSchema(Schema):
    """One delivery attempt."""

    at = fields.String(metadata={"format": "date-time"})
    statusCode = fields.Integer(allow_none=True, metadata={"description": "the answer's status"})
    error = fields.String(allow_none=True, metadata={"description": "why it did not succeed"})
    latencyMs = fields.Float(metadata={"minimum": 0})
    nextAttemptAt = fields.String(
        allow_none=True, metadata={"format": "date-time", "description": "the retry it led to"}
    )


@always_present
class DeliverySchema(Schema):
    """One notification to one endpoint, with every attempt made."""

    id = fields.Integer(metadata={"minimum": 1})
    webhookId = fields.String(attribute="endpoint_id", metadata={"example": EXAMPLE_ENDPOINT_ID})
    eventId = fields.String(
        attribute="uid", metadata={"description": "the `webhook-id` header, on every attempt"}
    )
    messageId = fields.String(attribute="message_id")
    type = fields.String(metadata={"enum": list(EVENT_TYPES)})
    status = fields.String(metadata={"enum": list(DELIVERY_STATES)})
    occurredAt = fields.DateTime(attribute="occurred_at")
    attemptCount = fields.Integer(attribute="attempts", metadata={"minimum": 0})
    nextAttemptAt = fields.DateTime(attribute="next_attempt_at", allow_none=True)
    lastAttemptAt = fields.DateTime(attribute="last_attempt_at", allow_none=True)
    lastStatusCode = fields.Integer(attribute="last_status_code", allow_none=True)
    lastError = fields.String(attribute="last_error", allow_none=True)
    finishedAt = fields.DateTime(attribute="finished_at", allow_none=True)
    attempts = fields.List(fields.Nested(AttemptSchema), attribute="attempt_list")
    payload = fields.Dict(
        metadata={"description": "the body every attempt sends: `{type, timestamp, data}`"}
    )


@always_present
class DeliveryPageSchema(Schema):
    """A page of deliveries, newest first."""

    items = fields.List(fields.Nested(DeliverySchema))
    next = fields.String(allow_none=True, metadata=_NEXT)


class WebhookQuerySchema(ListArgsSchema):
    """Paging of ``GET /api/webhooks``."""

    cursor = Matching(ENDPOINT_ID, metadata={"description": "from a `next` link"})


class DeliveryQuerySchema(ListArgsSchema):
    """Filters and paging of ``GET /api/webhooks/{id}/deliveries``."""

    cursor = Digits(
        validate=validate.Range(1, 2**31 - 1), metadata={"description": "from a `next` link"}
    )
    status = fields.String(validate=validate.OneOf(DELIVERY_STATES))
