"""One JSON line per request: gunicorn's access log, with what the relay knows of the request.

``RequestId`` (WSGI middleware, outermost) gives every request an id: the proxy's
``X-Request-ID`` when it is a plain token, else a new one. It is echoed in the response and
kept in the environ, where the views leave what the line should say (the callback receiver:
``relay.via`` and ``relay.outcome``). After the response has been sent, gunicorn calls
``GunicornLogger.access``, which writes the line: id, method, route (the URL rule, never the
path with its ids or the query string with an event's numbers), status, latency, bytes, the
client's address (as proxy trust sees it) and, for callbacks, via and outcome.

The line is on the callback hot path, so it is built from the environ directly (none of
gunicorn's per-request atoms, which copy every header and environ key), its record is a
``RequestRecord`` (no caller lookup), the request thread only queues it
(``logs.BatchedStreamHandler``), and the formatter writes its fields as they are (they are the
relay's own: it does not scrub them). Measured: README, "Deployment".
"""

from __future__ import annotations

import logging
import os
import re
import time

from gunicorn.glogging import Logger

from .logs import MASK, scrub

# A proxy's id is kept when it is a plain token (nginx's $request_id: 32 hex digits); anything
# else (too long, odd characters, something shaped like a phone number) gets a new one.
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
_DIGIT_RUN = re.compile(r"\d{7}")
HEADER = "X-Request-ID"
ENV_ID = "relay.request_id"
ROUTE = "relay.route"  # the URL rule the request matched (``/api/messages/<message_id>``)


def request_id(supplied: str | None) -> str:
    """The id of a request that came with ``X-Request-ID: supplied`` (None: without)."""
    if supplied and _TOKEN.match(supplied) and not _DIGIT_RUN.search(supplied):
        return supplied
    return os.urandom(16).hex()


class RequestId:
    """WSGI middleware: the request's id in ``environ["relay.request_id"]`` and in the
    response's ``X-Request-ID``."""

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        rid = environ[ENV_ID] = request_id(environ.get("HTTP_X_REQUEST_ID"))

        def start(status, headers, exc_info=None):
            headers.append((HEADER, rid))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def access_fields(environ, status, sent, seconds: float) -> dict:
    """The request line's fields."""
    fields = {
        "request_id": environ.get(ENV_ID) or MASK,
        "method": environ.get("REQUEST_METHOD"),
        "route": environ.get(ROUTE),
        "status": status,
        "latency_ms": round(seconds * 1000, 2),
        "bytes": sent,
        "remote": environ.get("REMOTE_ADDR"),
    }
    if fields["route"] is None:
        # Unmatched (404): the path says what was asked for; it is the client's text, scrubbed.
        fields["path"] = scrub(environ.get("PATH_INFO", "")[:200])
    via = environ.get("relay.via")
    if via is not None:
        fields["via"] = via
        fields["outcome"] = environ.get("relay.outcome")
    return fields


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class RequestRecord(logging.LogRecord):
    """The request line's record. ``log.info()`` would look up its caller (a walk up the
    stack) and ``LogRecord()`` the thread, the process and the time in several forms, a few
    microseconds per request for values this line never shows; here they are class defaults,
    and only the time, the pid and the fields are the request's own."""

    msg = "request"
    args = None
    levelname = "INFO"
    levelno = logging.INFO
    pathname = __file__
    filename = "requestlog.py"
    module = "requestlog"
    lineno = 0
    funcName = "access"
    exc_info = exc_text = stack_info = None
    thread = threadName = processName = taskName = None
    relativeCreated = 0.0

    def __init__(self, name: str, fields: dict) -> None:  # noqa: D107 - see the class
        self.name = name
        self.created = time.time()
        self.msecs = 0.0
        self.process = _pid
        self.fields = fields


class GunicornLogger(Logger):
    """gunicorn's logger with the relay's request line as its access log (``logger_class`` in
    ``gunicorn.conf.py``); the error log and everything else are gunicorn's own, in JSON by
    ``logconfig_dict``."""

    def access(self, resp, req, environ, request_time) -> None:
        log = self.access_log
        if not log.isEnabledFor(logging.INFO):
            return
        try:
            fields = access_fields(
                environ, resp.status_code, resp.sent, request_time.total_seconds()
            )
            log.handle(RequestRecord(log.name, fields))
        except Exception:  # a log line must never fail the request
            self.error_log.exception("request line failed")
