"""One error envelope: Catapult's ``{category, code, message, details}`` for /api and /callbacks."""

from __future__ import annotations

from flask import Flask, jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import ClientDisconnected, HTTPException

# HTTP status → Catapult error category (catapult-v1.md §1, "Errors").
CATEGORY_BY_STATUS = {
    400: "bad-request",
    401: "authentication",
    403: "authorization",
    404: "not-found",
    405: "bad-request",
    409: "conflict",
    413: "bad-request",
    415: "bad-request",
    422: "bad-request",
    429: "too-many-requests",
    503: "unavailable",
}


# Codes that must not depend on werkzeug's wording: a chunked body over the limit (caught while
# it is read) is the same error as one whose Content-Length says so (``register_limits``).
CODE_BY_STATUS = {413: "request-too-large"}


class ApiError(Exception):
    """An error answered in Catapult's shape."""

    def __init__(self, status, category, code, message, details=None, headers=None):
        super().__init__(message)
        self.status = status
        self.category = category
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def to_dict(self) -> dict:
        """The error body, as Catapult answers it."""
        return {
            "category": self.category,
            "code": self.code,
            "message": self.message,
            "details": self.details,
        }


# Seconds a client should wait before trying again while the database is unavailable.
RETRY_AFTER_S = 5


def database_unavailable(err: BaseException) -> bool:
    """The database refused or dropped the connection, or did not answer in time: the
    request did nothing (its transaction rolled back), and it can be tried again later."""
    if isinstance(err, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(err, sa_exc.DBAPIError):
        return err.connection_invalidated or isinstance(
            err, (sa_exc.OperationalError, sa_exc.InterfaceError)
        )
    return False


def unavailable_error() -> ApiError:
    """The API's answer while the database is down (Catapult's ``unavailable`` shape)."""
    return ApiError(
        503,
        "unavailable",
        "database-unavailable",
        "The relay's database is not answering; nothing was stored. Try again shortly.",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def too_large(limit: int, what: str = "Request bodies") -> ApiError:
    """413 for a body over ``limit`` bytes; ``Connection: close`` so that the server does not
    read the rest of it."""
    return ApiError(
        413,
        "bad-request",
        "request-too-large",
        f"{what} are limited to {limit} bytes.",
        headers={"Connection": "close"},
    )


def read_body(limit: int) -> bytes:
    """The request body, refused (413) when over ``limit`` bytes. A body that announced its
    length was checked before anything was read; a chunked one is read one byte past the
    limit at most (werkzeug's own limit would cut it short silently)."""
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    if length is not None and "wsgi.input_terminated" in request.environ:
        # The usual case (gunicorn, a Content-Length): read exactly that much from the server's
        # own stream, without werkzeug's wrappers around it (a measurable share of a callback).
        data = _read_exactly(request.environ["wsgi.input"], length)
        request._cached_data = data  # what get_data() answers from now on
    else:
        request.max_content_length = limit + 1
        data = request.get_data(cache=True)
    if len(data) > limit:
        raise too_large(limit)
    if request.content_length is not None and len(data) < request.content_length:
        # The client went away mid-body (the stream ends early instead of failing when a
        # limit is set): a truncated request is no request.
        raise ClientDisconnected()
    return data


def _read_exactly(stream, length: int) -> bytes:
    """Up to ``length`` bytes of ``stream`` (fewer only when the client went away)."""
    chunks, left = [], length
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def request_details() -> list[dict]:
    """The details Catapult attaches to every error: method, remote address, path."""
    return [
        {"name": "requestMethod", "value": request.method},
        {"name": "remoteAddress", "value": request.remote_addr or ""},
        {"name": "requestPath", "value": request.path.lstrip("/")},
    ]


def _wants_json() -> bool:
    return not request.path.startswith("/dashboard")


def register_error_handlers(app: Flask) -> None:
    """JSON in Catapult's shape for the API and callbacks; plain HTML for the dashboard."""

    @app.errorhandler(ApiError)
    def handle_api_error(err: ApiError):
        body = err.to_dict()
        if not body["details"]:
            body["details"] = request_details()
        if not _wants_json():
            return _with_dashboard_headers(jsonify(body), err.status, err.headers)
        return jsonify(body), err.status, err.headers

    @app.errorhandler(HTTPException)
    def handle_http_error(err: HTTPException):
        status = err.code or 500
        if not _wants_json():
            return _with_dashboard_headers(err.get_response())
        details = request_details()
        messages = getattr(err, "data", {}).get("messages") if hasattr(err, "data") else None
        if status in (400, 422) and messages:
            # Query-string validation (webargs): Catapult says 400 validation-error.
            status = 400
            for location in messages.values():
                for name, problems in location.items():
                    details.append({"name": name, "value": "; ".join(map(str, problems))})
            body = {
                "category": "bad-request",
                "code": "validation-error",
                "message": "Invalid query parameters: " + ", ".join(d["name"] for d in details[3:]),
                "details": details,
            }
            return jsonify(body), status
        body = {
            "category": CATEGORY_BY_STATUS.get(status, "internal-error"),
            "code": CODE_BY_STATUS.get(status) or (err.name or "error").lower().replace(" ", "-"),
            "message": err.description or err.name,
            "details": details,
        }
        headers = dict(err.get_headers()) if status in (401, 405) else {}
        headers.pop("Content-Type", None)
        return jsonify(body), status, headers

    @app.errorhandler(Exception)
    def handle_unexpected(err: Exception):
        if isinstance(err, HTTPException):
            return handle_http_error(err)
        if database_unavailable(err):
            app.logger.warning(
                "database unavailable on %s %s: %s", request.method, request.path, err
            )
            rollback_quietly()
            return handle_api_error(unavailable_error())
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        body = {
            "category": "unavailable",
            "code": "internal-error",
            "message": "The relay failed to handle this request; it has been logged.",
            "details": request_details(),
        }
        return jsonify(body), 500


def _with_dashboard_headers(response, status=None, headers=None):
    """An error under /dashboard that no dashboard view saw (an unknown URL, a method it does
    not take, a body over the limit): the dashboard's security headers all the same."""
    from .dashboard import security_headers

    if status is not None:
        response.status_code = status
    response.headers.update(headers or {})
    return security_headers(response)


def rollback_quietly() -> None:
    """Forget the request's failed transaction and its broken connection."""
    from .extensions import db

    try:
        db.session.rollback()
    except Exception:  # the connection is already gone: nothing to roll back
        pass
