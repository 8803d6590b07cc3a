"""A local sandbox of Bandwidth's Catapult v1 messaging API (shared/catapult-v1.md).

Independent of the relay: in-memory store, no configuration, its own app factory.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .core import Sandbox
from .errors import CatapultError
from .options import SandboxOptions

__all__ = ["CatapultError", "Sandbox", "SandboxOptions", "create_sandbox_app"]

EXTENSION = "catapult_sandbox"


def create_sandbox_app(**options: Any) -> Flask:
    """The sandbox as a Flask app; options are ``SandboxOptions`` fields plus knob names."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = Sandbox(SandboxOptions.build(**options))
    from . import introspect, views

    app.register_blueprint(views.bp)
    app.register_blueprint(introspect.bp)
    register_errors(app)
    return app


def _request_details() -> list[tuple[str, str]]:
    """The details every platform error carries; requestPath has no leading slash."""
    return [
        ("requestMethod", request.method),
        ("remoteAddress", request.remote_addr or ""),
        ("requestPath", request.path.lstrip("/")),
    ]


def error_response(error: CatapultError) -> Response:
    """Catapult's error body, ``application/json``."""
    response = jsonify(error.body(_request_details()))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


HTTP_ERRORS = {
    404: ("not-found", "resource-not-found", "The requested resource could not be found."),
    405: (
        "bad-request",
        "method-not-allowed",
        "The request method is not allowed for this resource",
    ),
}


def _http_error(exc: HTTPException) -> Response:
    """Routing and server errors in Catapult's shape."""
    status = exc.code or 500
    if status in HTTP_ERRORS:
        category, code, message = HTTP_ERRORS[status]
    elif status >= 500:
        category, code, message = (
            "unavailable",
            "internal-error",
            "An error occurred handling the message",
        )
    else:
        category, code, message = "bad-request", "bad-request", exc.description or exc.name
    # A 405 names the methods the resource takes (RFC 9110 15.5.6); werkzeug knows them.
    headers = {k: v for k, v in exc.get_headers() if k == "Allow"}
    return error_response(CatapultError(status, category, code, message, headers=headers))


def register_errors(app: Flask) -> None:
    """Every error, routing ones included, answered as JSON in Catapult's shape."""
    app.register_error_handler(CatapultError, error_response)
    app.register_error_handler(HTTPException, _http_error)
