"""The OpenAPI document's conventions, in one place: security, errors, the shared parts.

What every route shares is written here once:

- Security schemes ``bearerAuth`` (``Authorization: Bearer <API key>``: every ``/api`` route
  but this document) and ``callbackBasic`` (the callback credentials of ``/callbacks``).
- Error responses, all in Catapult's shape ``{category, code, message, details}``, registered
  as components named after their HTTP status (``BAD_REQUEST``, ``NOT_FOUND``, ...): the names
  flask-smorest itself refers to, so its own references (``@bp.arguments``) land on ours.
- The ``Conventions`` plugin gives every ``/api`` operation the bearer requirement and the
  401, 413 and 503 that any ``/api`` request can meet, without a word in its view.

A new ``/api`` blueprint (``/api/webhooks``, say) is an ``ApiBlueprint`` and writes only what
is its own::

    bp = ApiBlueprint("webhooks", __name__, url_prefix="/api")

    @bp.get("/webhooks/<webhook_id>")
    @bp.doc(operationId="getWebhook")
    @bp.response(200, WebhookSchema)
    @bp.errors(404)  # the Catapult-shaped NOT_FOUND response, with its examples
    def get_webhook(webhook_id): ...

``@bp.query(Schema)`` reads query arguments (a bad one is 400 ``validation-error``, as
Catapult answers, not webargs' 422); ``tests/test_openapi.py`` runs schemathesis against the
whole document, so a route that answers what its document does not say fails there.
"""

from __future__ import annotations

import http

from apispec import BasePlugin
from flask_smorest import Blueprint

from . import send_rules as rules
from .schemas import EXAMPLE_CARRIER_ID, EXAMPLE_RELAY_ID, RELAY_ID, CatapultErrorSchema

BEARER = [{"bearerAuth": []}]
CALLBACK_BASIC = [{"callbackBasic": []}]
# Any /api request can meet these before its view runs: credentials, body size, database.
API_ERRORS = (401, 413, 503)

SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the relay's API keys (`API_KEYS`): `Authorization: Bearer <key>`.",
    },
    "callbackBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "The callback credentials (`CALLBACK_USERNAME`, `CALLBACK_PASSWORD`) the "
        "relay embeds in the callback URLs it gives the carrier (`https://user:pass@host/...`).",
    },
}

HEADERS = {
    "RetryAfter": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "Location": {
        "description": "Where the new message can be read (`GET /api/messages/{id}`).",
        "required": True,
        "schema": {"type": "string", "pattern": f"/api/messages/{RELAY_ID}$"},
    },
    "IdempotentReplayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same `Idempotency-Key`: nothing was queued again.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "WWWAuthenticate": {
        "description": "The scheme the route expects.",
        "required": True,
        "schema": {"type": "string"},
    },
    "ConnectionClose": {
        "description": "The rest of the body is not read.",
        "schema": {"type": "string", "enum": ["close"]},
    },
}


def _error(category: str, code: str, message: str, details=None) -> dict:
    return {
        "value": {
            "category": category,
            "code": code,
            "message": message,
            "details": details
            or [
                {"name": "requestMethod", "value": "POST"},
                {"name": "remoteAddress", "value": "203.0.113.7"},
                {"name": "requestPath", "value": "api/messages"},
            ],
        }
    }


# status → (description, headers, named examples): the error responses the relay answers.
ERRORS = {
    400: (
        "The request is invalid: nothing was stored or queued.",
        {},
        {
            "validation-error": _error(
                "bad-request",
                "validation-error",
                "Invalid phone number in property 'to': expected E.164 such as +19195551212 or "
                "a 5-6 digit US/CA short code",
                [{"name": "to", "value": "555-1212"}],
            ),
            "missing-property": _error(
                "bad-request",
                "missing-property",
                "The 'message' resource property 'from' is required",
                [{"name": "from", "value": ""}],
            ),
            "invalid-json": _error(
                "bad-request", "invalid-json", "The request body is not valid JSON: ..."
            ),
        },
    ),
    401: (
        "Credentials are missing or wrong: nothing was stored.",
        {"WWW-Authenticate": "WWWAuthenticate"},
        {
            "unauthorized": _error(
                "authentication",
                "unauthorized",
                "A valid 'Authorization: Bearer <API key>' header is required.",
            )
        },
    ),
    403: (
        "Refused as the carrier refuses it: more than 50 messages in one request.",
        {},
        {
            "multi-message-limit": _error(
                "limit",
                "multi-message-limit",
                "A request can send at most 50 messages; this one has 51",
                [{"name": "limit", "value": "50"}, {"name": "count", "value": "51"}],
            )
        },
    ),
    404: (
        "No such resource.",
        {},
        {
            "message-not-found": _error(
                "not-found",
                "message-not-found",
                "No message with id 'rm-01m8t0afj5s3hnn1wyjt14pxdx' (relay id or carrier id).",
            )
        },
    ),
    409: (
        "The resource is not in a state that allows this.",
        {},
        {
            "no-carrier-id": _error(
                "conflict",
                "no-carrier-id",
                "Message 'rm-01m8t0afj5s3hnn1wyjt14pxdy' has no carrier id yet (status "
                "'queued'): the carrier cannot be asked about it.",
            )
        },
    ),
    413: (
        "The body (or the query string of a callback) is over the size limit; it was not read "
        "and nothing was stored.",
        {"Connection": "ConnectionClose"},
        {
            "request-too-large": _error(
                "bad-request", "request-too-large", "Request bodies are limited to 1048576 bytes."
            )
        },
    ),
    415: (
        "The body is not labelled JSON (`Content-Type: application/json`).",
        {},
        {
            "unsupported-media-type": _error(
                "bad-request",
                "unsupported-media-type",
                "Send the message as JSON with 'Content-Type: application/json'.",
            )
        },
    ),
    422: (
        "The `Idempotency-Key` was used before with a different body: nothing was queued.",
        {},
        {
            "idempotency-key-reused": _error(
                "bad-request",
                "idempotency-key-reused",
                "This Idempotency-Key was already used with a different request body.",
            )
        },
    ),
    502: (
        "The carrier did not answer (or answered with an error): nothing was recorded.",
        {},
        {
            "carrier-error": _error(
                "unavailable", "carrier-error", "The carrier did not answer: ..."
            )
        },
    ),
    503: (
        "The relay's database is not answering: nothing was stored. Try again after "
        "`Retry-After` seconds.",
        {"Retry-After": "RetryAfter"},
        {
            "database-unavailable": _error(
                "unavailable",
                "database-unavailable",
                "The relay's database is not answering; nothing was stored. Try again shortly.",
            )
        },
    ),
}


def response_name(status: int) -> str:
    """The component name of the error response for ``status`` (flask-smorest's naming)."""
    return http.HTTPStatus(status).name


def register_responses(spec) -> None:
    """The error responses as components, each registered lazily (only those referred to
    appear in the document)."""
    spec.components.schema("CatapultError", schema=CatapultErrorSchema)
    for status in http.HTTPStatus:
        if status < 400:
            continue
        description, headers, examples = ERRORS.get(status, (status.phrase, {}, {}))
        content = {"schema": "CatapultError"}
        if examples:
            content["examples"] = examples
        response = {
            "description": description,
            "content": {"application/json": content},
        }
        if headers:
            response["headers"] = {
                name: {"$ref": f"#/components/headers/{ref}"} for name, ref in headers.items()
            }
        spec.components.response(status.name, response, lazy=True)


def register_components(spec) -> None:
    """Error responses, security schemes, headers and the request schemas written by hand."""
    register_responses(spec)
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    for name, header in HEADERS.items():
        spec.components.header(name, header)
    for name, schema in REQUEST_SCHEMAS.items():
        spec.components.schema(name, schema)


class Conventions(BasePlugin):
    """Every ``/api`` operation (but the document itself) is behind ``bearerAuth`` and can be
    answered 401, 413 and 503; every other operation can meet the 413 of the body limit."""

    def operation_helper(self, path=None, operations=None, **kwargs):
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            statuses = API_ERRORS if _behind_bearer(path) else (413,)
            if _behind_bearer(path):
                operation.setdefault("security", BEARER)
            for status in statuses:
                if status not in responses and str(status) not in responses:
                    responses[status] = response_name(status)


def _behind_bearer(path: str | None) -> bool:
    return bool(path) and path.startswith("/api/") and path != "/api/openapi.json"


class ApiBlueprint(Blueprint):
    """A flask-smorest blueprint with the relay's two shorthands: ``errors`` and ``query``."""

    def errors(self, *statuses: int):
        """Document the Catapult-shaped error responses ``statuses`` of this operation."""
        return self.doc(responses={status: response_name(status) for status in statuses})

    def query(self, schema):
        """Query arguments from ``schema``, as keyword arguments; invalid ones are answered 400
        ``validation-error`` (``errors.register_error_handlers``)."""
        return self.arguments(schema, location="query", as_kwargs=True, error_status_code=400)


# ---------------------------------------------------------------- the send body, by hand
# Written from send_rules' own patterns and limits (marshmallow cannot say "text is required
# unless media is sent"); tests/test_openapi.py checks it against validate_message.

_NULL = {"type": "null"}
_NO_NUL = rules.anchored(rules.NO_NUL_TEXT)


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, _NULL]}


_URL = {"type": "string", "pattern": rules.anchored(rules.MEDIA_URL)}
_COMMON = {
    "from": {
        "type": "string",
        "pattern": rules.anchored(rules.E164),
        "description": "one of the account's numbers, E.164",
        "examples": ["+19195551212"],
    },
    "to": {
        "type": "string",
        "pattern": rules.anchored(f"{rules.E164}|{rules.SHORT_CODE}"),
        "description": "E.164, or a US/CA short code",
        "examples": ["+19195551313"],
    },
    "callbackHttpMethod": _nullable(
        {
            "type": "string",
            "pattern": rules.anchored(rules.METHOD_PATTERN),
            "description": "how the carrier calls the relay back (GET or POST, any case)",
            "examples": ["POST"],
        }
    ),
    "callbackTimeout": {
        "anyOf": [
            {
                "type": "integer",
                "minimum": rules.MIN_CALLBACK_TIMEOUT,
                "maximum": rules.MAX_CALLBACK_TIMEOUT,
            },
            {"type": "string", "pattern": rules.anchored(rules.TIMEOUT_STRING)},
            _NULL,
        ],
        "description": "milliseconds, 1..10000, as a number or a numeric string",
        "examples": [2000],
    },
    "tag": _nullable(
        {
            "type": "string",
            "pattern": _NO_NUL,
            "description": "your own tag, any length (no NUL, no unpaired surrogate)",
            "examples": ["order-7"],
        }
    ),
    "callbackUrl": {**_NULL, "description": "refused unless null: the relay sets its own"},
    "fallbackUrl": {**_NULL, "description": "refused unless null: the relay sets its own"},
}
_TEXT = {
    "type": "string",
    "maxLength": rules.MAX_TEXT,
    "description": "at most 2048 characters (no NUL, no unpaired surrogate)",
}
REQUEST_SCHEMAS = {
    "Sms": {
        "title": "SMS",
        "description": "A text message: `text` is required and not blank; `media` absent or "
        "null. Any other key must be absent or null.",
        "type": "object",
        "required": ["from", "to", "text"],
        "properties": {
            **_COMMON,
            "text": {
                **_TEXT,
                "pattern": rules.anchored(rules.NON_BLANK_TEXT),
                "examples": ["Your order has shipped"],
            },
            "media": _NULL,
            "receiptRequested": _nullable(
                {
                    "type": "string",
                    "pattern": rules.anchored(rules.RECEIPT_PATTERN),
                    "description": "none (the carrier's default), all or error; any case",
                    "examples": ["all"],
                }
            ),
        },
        "additionalProperties": _NULL,
    },
    "Mms": {
        "title": "MMS",
        "description": "A message with media: `text` is optional (it may be blank), and "
        "receipts cannot be requested (`receiptRequested` absent or null). Any other key must "
        "be absent or null.",
        "type": "object",
        "required": ["from", "to", "media"],
        "properties": {
            **_COMMON,
            "text": _nullable({**_TEXT, "pattern": _NO_NUL}),
            "media": {
                "anyOf": [_URL, {"type": "array", "minItems": 1, "items": _URL}],
                "description": "an absolute http(s) URL in ASCII, or a list of them",
                "examples": ["https://media.example.com/cat.png"],
            },
            "receiptRequested": {**_NULL, "description": "MMS cannot request receipts"},
        },
        "additionalProperties": _NULL,
    },
    "SendRequest": {
        "description": "One message (answered 201) or a batch (answered 202).",
        "oneOf": [
            {"$ref": "#/components/schemas/Sms"},
            {"$ref": "#/components/schemas/Mms"},
        ],
    },
    "SendBatch": {
        "description": "1 to 50 messages (more is 403 multi-message-limit). Each item is checked "
        "on its own, as Catapult does: one that is not a valid message is answered as an error "
        "item of the 202, in its place, and the others are queued. So any item is accepted "
        "here, even one that is not an object.",
        "type": "array",
        "minItems": 1,
        "maxItems": rules.MAX_BATCH,
        "items": {"anyOf": [{"$ref": "#/components/schemas/SendRequest"}, {}]},
    },
    "BatchAccepted": {
        "type": "object",
        "required": ["result", "id", "location"],
        "properties": {
            "result": {"const": "accepted"},
            "id": {"type": "string", "pattern": f"^{RELAY_ID}$"},
            "location": {"type": "string", "pattern": f"/api/messages/{RELAY_ID}$"},
        },
        "additionalProperties": False,
    },
    "BatchError": {
        "type": "object",
        "required": ["result", "error"],
        "properties": {
            "result": {"const": "error"},
            "error": {"$ref": "#/components/schemas/CatapultError"},
        },
        "additionalProperties": False,
    },
    "BatchResult": {
        "description": "The answer to one batch item, in request order.",
        "oneOf": [
            {"$ref": "#/components/schemas/BatchAccepted"},
            {"$ref": "#/components/schemas/BatchError"},
        ],
    },
}


# ---------------------------------------------------------------- routes outside flask-smorest

_EVENT_EXAMPLE = {
    "eventType": "sms",
    "direction": "out",
    "messageId": EXAMPLE_CARRIER_ID,
    "messageUri": f"https://api.catapult.inetwork.com/v1/users/u-1/messages/{EXAMPLE_CARRIER_ID}",
    "from": "+19195551212",
    "to": "+19195551313",
    "text": "Your order has shipped",
    "time": "2026-11-28T10:00:00.000Z",
    "state": "sent",
    "deliveryState": "delivered",
    "deliveryCode": 0,
    "deliveryDescription": "Message delivered to carrier",
    "segmentCount": 1,
    "tag": EXAMPLE_RELAY_ID,
}
_EVENT_FIELDS = ", ".join(f"`{name}`" for name in [*_EVENT_EXAMPLE, "media", "applicationId"])
_STORED = (
    "Every authenticated request is stored before it is answered, whatever it holds: one "
    "that names neither a message id nor a tag, or cannot be read, is kept raw and flagged "
    "`unparseable` (the carrier does not send an event twice). Nothing else is ever refused."
)


def _callback_operations(via: str) -> dict:
    """GET and POST of one callback URL (``via`` primary or fallback)."""
    answers = {
        "200": {"description": "Stored (committed, or journaled while the database is down)."},
        "401": response_name(401),
        "413": response_name(413),
        "503": {
            "description": "Neither the database nor the journal could take it: not stored, "
            "so the carrier's other try (the fallback URL) may.",
            "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CatapultError"}}
            },
        },
    }
    suffix = "Fallback" if via == "fallback" else "Primary"
    what = (
        "the fallback URL (the carrier's second and last try)"
        if via == "fallback"
        else ("the primary callback URL")
    )
    return {
        "get": {
            "tags": ["callbacks"],
            "operationId": f"callback{suffix}Get",
            "summary": f"Receive a Catapult event on {what}, as query parameters",
            "description": f"`callbackHttpMethod=GET`: the event's fields ({_EVENT_FIELDS}) "
            "arrive as query parameters (the first of a repeated name counts; MMS `media` as "
            f"`[url1, url2]`). {_STORED} The query string is limited like a callback body.",
            "security": CALLBACK_BASIC,
            "parameters": [
                {
                    "in": "query",
                    "name": "event",
                    "style": "form",
                    "explode": True,
                    "description": "the event's fields, each as a parameter",
                    "schema": {"type": "object", "additionalProperties": True},
                    "example": {"messageId": EXAMPLE_CARRIER_ID, "state": "sent"},
                }
            ],
            "responses": answers,
        },
        "post": {
            "tags": ["callbacks"],
            "operationId": f"callback{suffix}Post",
            "summary": f"Receive a Catapult event on {what}, as a JSON body",
            "description": f"The carrier's default: a JSON object with the event's fields "
            f"({_EVENT_FIELDS}). {_STORED} Bodies are limited to `CALLBACK_MAX_BODY_BYTES` "
            "(64 KiB by default).",
            "security": CALLBACK_BASIC,
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {"description": "a Catapult event, or anything else"},
                        "example": _EVENT_EXAMPLE,
                    },
                    "*/*": {"schema": {"description": "any other body, of any type"}},
                },
            },
            "responses": answers,
        },
    }


_READINESS = {
    "type": "object",
    "required": ["status", "degraded", "database", "journal"],
    "properties": {
        "status": {"enum": ["ok", "degraded", "unavailable"]},
        "degraded": {"type": "boolean"},
        "database": {"enum": ["ok", "unavailable"]},
        "databaseError": {"type": "string"},
        "journal": {
            "type": "object",
            "required": ["writable", "depth", "oldestAgeSeconds"],
            "properties": {
                "writable": {"type": "boolean"},
                "depth": {"type": ["integer", "null"], "minimum": 0},
                "oldestAgeSeconds": {"type": ["number", "null"], "minimum": 0},
            },
        },
    },
}


def _public(operation_id: str, summary: str, responses: dict, tag: str = "ops") -> dict:
    return {
        "get": {
            "tags": [tag],
            "operationId": operation_id,
            "summary": summary,
            "security": [],
            "responses": responses,
        }
    }


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document_other_routes(spec, app) -> None:
    """The routes that are not flask-smorest views (callbacks, health, metrics, this document),
    each documented on its own URL rule."""
    spec.tag({"name": "callbacks", "description": "Where the carrier delivers its events"})
    spec.tag({"name": "ops", "description": "For load balancers and monitoring (no credentials)"})
    ok = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    readiness = {
        "200": _json("Ready (`degraded` while callbacks go to the journal).", _READINESS),
        "503": _json("Neither the database nor the journal can take a callback.", _READINESS),
    }
    metrics = {
        "200": {
            "description": "The metrics.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    }
    operations = {
        "callbacks.primary": _callback_operations("primary"),
        "callbacks.fallback": _callback_operations("fallback"),
        "ops.healthz": _public(
            "healthz", "The process is alive (no database access)", {"200": _json("Alive.", ok)}
        ),
        "ops.readyz": _public(
            "readyz",
            "Callbacks can be stored here: in the database, or else in the journal (degraded)",
            readiness,
        ),
        "metrics": _public("metrics", "Prometheus metrics (text exposition format)", metrics),
        "api-docs.openapi_json": _public(
            "openapi",
            "This document",
            {"200": _json("The OpenAPI document.", {"type": "object"})},
            tag="api",
        ),
    }
    for rule in app.url_map.iter_rules():
        if rule.endpoint in operations:
            spec.path(rule=rule, operations=operations[rule.endpoint], parameters=[])


# ---------------------------------------------------------------- POST /api/messages

IDEMPOTENCY_KEY = "[!-~](?:[ -~]{0,198}[!-~])?"  # 1-200 printable ASCII, no outer blanks
_SMS_EXAMPLE = {"from": "+19195551212", "to": "+19195551313", "text": "Your order has shipped"}
_TO_MESSAGE = {
    "GetMessage": {
        "operationId": "getMessage",
        "parameters": {"message_id": "$response.body#/id"},
        "description": "The message just queued, with its timeline.",
    },
    "ReconcileMessage": {
        "operationId": "reconcileMessage",
        "parameters": {"message_id": "$response.body#/id"},
        "description": "Ask the carrier about it (409 until the carrier has given it an id).",
    },
}
SEND_DOC = {
    "operationId": "sendMessages",
    "summary": "Send one message (201) or a batch of up to 50 (202)",
    "parameters": [
        {
            "in": "header",
            "name": "Idempotency-Key",
            "description": "Repeat a request with the same key and body to get its first answer "
            "again (nothing is queued twice); the same key with another body is 422. Keys are "
            "scoped to the API key.",
            "schema": {"type": "string", "pattern": rules.anchored(IDEMPOTENCY_KEY)},
            "example": "order-7-confirmation",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/SendRequest"},
                        {"$ref": "#/components/schemas/SendBatch"},
                    ]
                },
                "examples": {
                    "sms": {"value": {**_SMS_EXAMPLE, "receiptRequested": "all", "tag": "order-7"}},
                    "mms": {
                        "value": {
                            "from": "+19195551212",
                            "to": "+19195551313",
                            "media": ["https://media.example.com/cat.png"],
                        }
                    },
                    "batch": {"value": [_SMS_EXAMPLE, {**_SMS_EXAMPLE, "to": "12345"}]},
                },
            }
        },
    },
    "responses": {
        201: {
            "links": _TO_MESSAGE,
            "headers": {
                "Location": {"$ref": "#/components/headers/Location"},
                "Idempotent-Replayed": {"$ref": "#/components/headers/IdempotentReplayed"},
            },
        },
        202: {
            "links": {
                "GetFirstMessage": {
                    "operationId": "getMessage",
                    "parameters": {"message_id": "$response.body#/0/id"},
                    "description": "The first item, when it was accepted.",
                }
            },
            "headers": {"Idempotent-Replayed": {"$ref": "#/components/headers/IdempotentReplayed"}},
        },
    },
}

MESSAGE_ID = {
    "in": "path",
    "name": "message_id",
    "required": True,
    "description": "the relay id (`rm-...`) or the carrier's id (`m-...`)",
    "schema": {"type": "string", "minLength": 1},
    "examples": {
        "relay": {"value": EXAMPLE_RELAY_ID},
        "carrier": {"value": EXAMPLE_CARRIER_ID},
    },
}
