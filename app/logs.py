"""Structured logs: one JSON object per line, from every process of the relay.

gunicorn's master and workers get this configuration from ``gunicorn.conf.py``
(``logconfig_dict``), the worker role from ``configure`` (``flask --app wsgi dispatch``). Every
line has ``time``, ``level``, ``logger``, ``pid`` and ``message``; the request line
(``requestlog.py``) and the dispatcher's batch line add their own fields.

Nothing secret reaches a line: the relay never logs credentials, headers, query strings or
bodies, and as a second line of defence every string of a line the relay did not build field by
field itself (messages, exceptions, extras) is scrubbed: the configured secrets, credentials
in URLs and anything shaped like a phone number (all but its last 4 digits) are masked. Carrier
and database errors quote what they were given, and the payloads they were given hold numbers.
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import re
import threading
import time
from datetime import UTC, datetime
from urllib.parse import quote

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

# E.164 (+ and up to 15 digits), its percent-encoded form, or a bare run of 7 or more digits
# that is not part of a longer word: all but the last 4 digits go.
_NUMBER = re.compile(r"(?<![0-9A-Za-z])(?:\+|%2[Bb])?\d{3,11}(\d{4})(?![0-9A-Za-z])")
# user:password@ (or user@) in a URL: the callback URLs carry the callback credentials.
_URL_USERINFO = re.compile(r"(?<=://)[^/\s@\"']+@")
MASK = "***"
# Shorter values would mask ordinary words; every generated secret is far longer.
SECRET_MIN_LENGTH = 6
_secrets: list[str] = []


def mask_number(number: str | None) -> str | None:
    """A phone number as ``***`` + its last 4 digits (short codes too: they are not people)."""
    if not number:
        return number
    return MASK + number[-4:]


def register_secrets(config) -> None:
    """Remember the secret values of ``config`` (and the forms they travel in: URL-encoded,
    in a Basic header) so that ``scrub`` masks them wherever they would appear."""
    from .config import SECRET_NAMES

    found: set[str] = set()
    for name in SECRET_NAMES:
        value = config.get(name)
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str) and len(item) >= SECRET_MIN_LENGTH:
                found.update({item, quote(item, safe="")})
    for user, password in (
        (config.get("CALLBACK_USERNAME"), config.get("CALLBACK_PASSWORD")),
        (config.get("DASHBOARD_USERNAME"), config.get("DASHBOARD_PASSWORD")),
    ):
        if user and password:
            found.add(base64.b64encode(f"{user}:{password}".encode()).decode())
    # Longest first, so a secret containing another is masked whole.
    _secrets[:] = sorted(found | set(_secrets), key=len, reverse=True)


def scrub(text: str) -> str:
    """``text`` with secrets, URL credentials and phone numbers masked."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL_USERINFO.sub(MASK + "@", text)
    return _NUMBER.sub(lambda m: MASK + m.group(1), text)


def _scrub_value(value):
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(_LibraryJsonFormatter):
    """python-json-logger's formatter with the relay's field names, a UTC ``time`` first, and
    every string scrubbed, except in the request line (a record with ``fields``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__("%(levelname)s %(name)s %(message)s", *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__.get("fields")
        if fields is None:
            return super().format(record)
        # The request line (requestlog.py), on the callback hot path: fields the relay built
        # and checked itself, serialized as they are, without the generic extraction of the
        # record's attributes and the scrubbing that other lines get.
        return self.jsonify_log_record(
            {
                "time": _iso(record.created),
                "level": record.levelname,
                "logger": record.name,
                "message": record.msg,
                **fields,
                "pid": record.process,
            }
        )

    def add_fields(self, log_data, record, message_dict) -> None:
        log_data["time"] = _iso(record.created)
        super().add_fields(log_data, record, message_dict)
        log_data["pid"] = record.process
        for key, value in log_data.items():
            log_data[key] = _scrub_value(value)


class RequestContext(logging.Filter):
    """Adds the request id to lines logged while a request is handled (errors, warnings), so
    they can be matched with the request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__ and "fields" not in record.__dict__:
            from flask import has_request_context, request

            if has_request_context():
                record.request_id = request.environ.get("relay.request_id")
        return True


class BatchedStreamHandler(logging.StreamHandler):
    """The request lines' handler: the request thread only queues its record; a thread of the
    process formats what has queued and writes it in one go every ``interval`` seconds (and when
    logging shuts down at exit).

    One lock, one format and one write per request, on the request thread, cost a callback
    far more under gunicorn's threads than alone (the threads queue on the handler's lock and
    hand the interpreter lock back and forth around each write); queued, they cost an append.
    Every request still gets its line, at most ``interval`` later; a process killed outright
    loses the lines of its last ``interval``."""

    def __init__(self, stream=None, interval: float = 0.1) -> None:
        super().__init__(stream)
        self.interval = interval
        self._queued: collections.deque = collections.deque()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        # A forked child (a gunicorn worker) starts a writer of its own; what was queued
        # before the fork is the parent's to write.
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._queued = collections.deque()
        self._writer = None
        self._writer_lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        if self._writer is None:
            self._start_writer()
        self._queued.append(record)  # thread-safe, no lock taken
        return True

    emit = handle

    def _start_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_forever, name="relay-request-log", daemon=True
                )
                self._writer.start()

    def _write_forever(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        """Format and write every queued record."""
        lines = []
        while self._queued:
            record = self._queued.popleft()
            try:
                lines.append(self.format(record) + self.terminator)
            except Exception:
                self.handleError(record)
        self.acquire()
        try:
            if lines and self.stream is not None:
                self.stream.write("".join(lines))
            super().flush()
        finally:
            self.release()


def level() -> str:
    """``LOG_LEVEL`` (default INFO) as a logging level name."""
    return (os.environ.get("LOG_LEVEL") or "INFO").upper()


def logconfig(stream: str = "ext://sys.stderr") -> dict:
    """The ``logging.config.dictConfig`` of every relay process: JSON lines on ``stream``.

    gunicorn's own loggers are configured here too (``gunicorn.conf.py`` passes this as
    ``logconfig_dict``): its error log gets no level, so ``--log-level`` still applies; its access
    log is the relay's request line (``requestlog.GunicornLogger``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestContext}},
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["request"],
                "stream": stream,
            },
            # The request lines, one per request, on the callback hot path.
            "requests": {
                "()": BatchedStreamHandler,
                "formatter": "json",
                "stream": stream,
            },
        },
        "root": {"level": level(), "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"handlers": ["json"], "propagate": False},
            "gunicorn.access": {"handlers": ["requests"], "propagate": False},
            # One line per connection it opens, with the carrier URL: noise, not news.
            "urllib3": {"level": "WARNING"},
            # alembic's plugin set-up, logged by every worker that imports it.
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
    }


def configure(app=None) -> None:
    """JSON logs for a process that is not gunicorn (the worker role); with ``app``, its
    secrets are masked too and Flask's own plain-text handler is taken off its logger."""
    import logging.config

    logging.config.dictConfig(logconfig())
    if app is not None:
        from flask.logging import default_handler

        app.logger.removeHandler(default_handler)
        register_secrets(app.config)
