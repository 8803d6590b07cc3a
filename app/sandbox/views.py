"""The Catapult v1 messaging endpoints: send, get one, list (catapult-v1.md sections 1-2)."""

from __future__ import annotations

import hmac
import json
import threading
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from . import errors
from .core import Sandbox
from .errors import MULTI_MESSAGE_LIMIT, CatapultError
from .listing import list_page
from .validation import validate_message

bp = Blueprint("catapult_v1", __name__, url_prefix="/v1/users/<user_id>")


def sandbox() -> Sandbox:
    """The app's Sandbox."""
    return current_app.extensions["catapult_sandbox"]


def base_url() -> str:
    """Base of absolute URLs: the configured public URL, else the request's own host."""
    return sandbox().options.public_url or request.host_url.rstrip("/")


@bp.before_request
def authenticate() -> None:
    """HTTP Basic with the API token and secret, then the path's userId must be the account's."""
    options = sandbox().options
    auth = request.authorization
    if auth is None or auth.type != "basic":
        raise CatapultError(
            401,
            "authentication",
            "unauthorized",
            "Authentication is required: HTTP Basic with the API token and secret",
            headers={"WWW-Authenticate": 'Basic realm="Catapult"'},
        )
    # Compared as bytes: compare_digest refuses non-ASCII str, and any header may arrive.
    given_token = str(auth.username or "").encode()
    given_secret = str(auth.password or "").encode()
    valid = hmac.compare_digest(given_token, options.token.encode()) & hmac.compare_digest(
        given_secret, options.secret.encode()
    )
    if not valid:
        raise CatapultError(
            401,
            "authentication",
            "unauthorized",
            "The API token or secret is not valid",
            headers={"WWW-Authenticate": 'Basic realm="Catapult"'},
        )
    user_id = (request.view_args or {}).get("user_id")
    if user_id != options.user_id:
        # 401 user-access-denied, as listed for the v1 API (catapult-v1.md error table).
        raise CatapultError(
            401,
            "authorization",
            "user-access-denied",
            f"User {options.user_id} does not have permission to access user {user_id}",
            details=[("userId", str(user_id))],
        )


def _reject_constant(name: str) -> None:
    """NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def _parse_body() -> Any:
    """The JSON body, whatever Content-Type says; malformed JSON is a 400 in Catapult's shape."""
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise errors.bad_parameters("the request body is not valid JSON") from None


def _accept(item: Any) -> tuple[str, list[threading.Event]]:
    """Validate, rate-limit and store one message; returns its Location and early flags."""
    box = sandbox()
    request_ = validate_message(item)
    box.limiter.take(request_.from_)
    message, early = box.create(request_, base_url())
    return box.message_uri(base_url(), message.id), early


def created(location: str) -> Response:
    """201 with the absolute message URL in Location, an empty body and no Content-Type.

    catapult-v1.md 1: v1 SDKs parse every body labelled ``application/json``, so an empty body
    labelled JSON crashes them (the python SDK's ``send_message`` raises JSONDecodeError).
    """
    response = Response(status=201, headers={"Location": location})
    del response.headers["Content-Type"]  # werkzeug labels every response text/html otherwise
    return response


@bp.post("/messages")
def send_messages(user_id: str) -> Response:
    """Send one message (201 + Location) or up to 50 (202 + per-item results in order)."""
    body = _parse_body()
    box = sandbox()
    if isinstance(body, dict):
        location, early = _accept(body)
        box.wait_early(early)
        return created(location)
    if not isinstance(body, list):
        raise errors.bad_parameters("expected a message object or an array of message objects")
    if len(body) > MULTI_MESSAGE_LIMIT:
        raise errors.multi_message_limit(len(body))
    results: list[dict[str, Any]] = []
    flags: list[threading.Event] = []
    for item in body:
        try:
            location, early = _accept(item)
        except CatapultError as exc:
            # Per-item errors carry empty details (postMessages.md multi-send example).
            results.append({"result": "error", "error": exc.body()})
            continue
        flags.extend(early)
        results.append({"result": "accepted", "location": location})
    box.wait_early(flags)
    response = jsonify(results)
    response.status_code = 202
    return response


@bp.get("/messages/<message_id>")
def get_message(user_id: str, message_id: str) -> Response:
    """One message resource, readable right after its 201."""
    sandbox().read_limiter.take()
    resource = sandbox().store.read(message_id, lambda m: m.resource())
    if resource is None:
        raise errors.message_not_found(message_id)
    return jsonify(resource)


@bp.get("/messages")
def list_messages(user_id: str) -> Response:
    """Filtered list, newest selected first, with ``Link: <...sortKeyLT=...>; rel="next"``."""
    sandbox().read_limiter.take()
    items, next_url = list_page(sandbox().store, request.args, base_url() + request.path)
    response = jsonify(items)
    if next_url:
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response
