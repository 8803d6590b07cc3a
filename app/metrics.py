"""Prometheus metrics, correct across processes.

Under gunicorn every worker is a process of its own: ``gunicorn.conf.py`` gives them
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, one directory per
instance, wiped at start; a worker that exits is marked dead), and ``/metrics`` sums what every
worker of the instance counted, whichever worker answers the scrape. Counters and histograms
are summed; the one process gauge says how it combines (``multiprocess_mode``). The worker role
(``flask --app wsgi dispatch``) is one process; ``WORKER_METRICS_BIND`` serves its metrics.

What the callback path pays: one counter increment and one histogram observation per
callback, no database query. What the database knows (queue depth, parked events, time to
receipt) and the journal's depth are read when scraped, once per scrape, not summed over
processes (every process would report the same number).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from flask import Flask, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

CALLBACKS = Counter(
    "relay_callbacks_total", "Callback events received", ["via", "method", "outcome"]
)
# From the request's arrival in the view to its answer (the carrier allows 10 s): buckets
# around the 50 ms target, out to the carrier's limit.
CALLBACK_SECONDS = Histogram(
    "relay_callback_seconds",
    "Time to answer a callback, by via",
    ["via"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SENDS = Counter("relay_carrier_sends_total", "Messages handed to the carrier", ["outcome"])
CARRIER_REQUEST_SECONDS = Histogram(
    "relay_carrier_request_seconds",
    "Duration of one carrier send request (up to 50 messages)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0),
)
LEASE_ACQUIRED = Counter(
    "relay_dispatcher_lease_acquired_total", "Times a dispatcher took the lease (takeovers)"
)
# livesum: the sum over live processes, so 1 while some process of this instance is the active
# dispatcher; a worker that died is marked dead by gunicorn.conf.py and drops out.
DISPATCHER_ACTIVE = Gauge(
    "relay_dispatcher_active",
    "1 while a process here holds the dispatcher lease",
    multiprocess_mode="livesum",
)
API_MESSAGES = Counter("relay_api_messages_total", "Messages accepted by the send API")
AUTH_FAILURES = Counter(
    "relay_auth_failures_total",
    "Requests refused for missing or wrong credentials",
    ["area", "reason"],  # api|callbacks|dashboard; missing|wrong-scheme|empty|wrong-credentials
)
JOURNAL_WRITTEN = Counter(
    "relay_journal_written_total", "Callbacks written to the journal (the database could not)"
)
JOURNAL_REPLAYED = Counter(
    "relay_journal_replayed_total", "Journaled callbacks applied to the database"
)
NAN = float("nan")
RECEIPT_WINDOW = timedelta(hours=1)

WEBHOOK_ATTEMPTS = Counter(
    "relay_webhook_attempts_total",
    "Webhook delivery attempts by outcome (succeeded, retry: failed and due again, failed: the "
    "schedule ran out)",
    ["outcome"],
)


class JournalCollector:
    """The journal's depth, oldest entry and set-aside entries, read when scraped (the journal
    is shared by the host's processes: one reading, not a sum over them)."""

    def __init__(self, journal) -> None:
        self.journal = journal

    def collect(self):
        try:
            depth, oldest = self.journal.depth()
            dead = self.journal.dead()
        except Exception:  # an unreadable journal shows as NaN, not as a failed scrape
            depth, oldest, dead = NAN, NAN, NAN
        yield GaugeMetricFamily(
            "relay_journal_depth", "Callbacks waiting in the journal", value=depth
        )
        yield GaugeMetricFamily(
            "relay_journal_oldest_age_seconds",
            "Age of the oldest callback waiting in the journal (0 when empty)",
            value=oldest or 0.0,
        )
        yield GaugeMetricFamily(
            "relay_journal_dead", "Journal entries set aside after repeated failures", value=dead
        )


class DatabaseCollector:
    """What the database says, read when scraped: queued messages, parked events, messages in
    ``unknown``, and the time to receipt of the last hour's messages (from the stats rollups,
    as ``/api/stats`` reads it). Every instance reports the same values: aggregate with max."""

    def __init__(self, app: Flask, ingest) -> None:
        self.app = app
        self.ingest = ingest

    def read(self) -> dict:
        from sqlalchemy import func, select
        from sqlalchemy.orm import Session

        from .extensions import db
        from .models import CallbackEvent, Message
        from .queries import stats
        from .retention import database_time

        with self.app.app_context():
            engine = db.engine
        with Session(engine) as session:
            if engine.dialect.name == "postgresql":
                session.execute(func.set_config("statement_timeout", "2000", True).select())

            def count(*where):
                return session.scalar(select(func.count()).where(*where))

            now = database_time(engine)
            receipts = stats(session, now - RECEIPT_WINDOW)["timeToReceipt"]
            return {
                "queued": count(Message.status == "queued"),
                "unknown": count(Message.status == "unknown"),
                "parked": count(CallbackEvent.message_id.is_(None), CallbackEvent.parked.is_(True)),
                "receipts": receipts,
            }

    def collect(self):
        values: dict = {}
        # A database that does not answer costs the scrape one second, not a connect timeout.
        if self.ingest is None or self.ingest.database_answers(timeout=1.0)[0]:
            try:
                values = self.read()
            except Exception as exc:
                log.warning("metrics: the database could not be read: %s", exc)
        receipts = values.get("receipts") or {}
        yield GaugeMetricFamily(
            "relay_queue_depth",
            "Messages queued for the dispatcher",
            value=values.get("queued", NAN),
        )
        yield GaugeMetricFamily(
            "relay_messages_unknown",
            "Messages whose send outcome is not known yet (reconciliation settles them)",
            value=values.get("unknown", NAN),
        )
        yield GaugeMetricFamily(
            "relay_parked_events",
            "Callback events waiting for their message's carrier id",
            value=values.get("parked", NAN),
        )
        family = GaugeMetricFamily(
            "relay_time_to_receipt_seconds",
            "Time from carrier acceptance to the final receipt, messages of the last hour",
            labels=["quantile"],
        )
        for quantile in ("0.5", "0.95"):
            value = receipts.get("p50" if quantile == "0.5" else "p95")
            family.add_metric([quantile], NAN if value is None else value)
        yield family
        yield GaugeMetricFamily(
            "relay_time_to_receipt_count",
            "Messages of the last hour with a final receipt",
            value=receipts.get("count", NAN),
        )


def registry(*collectors) -> CollectorRegistry:
    """A registry for one scrape: every process's values (multiprocess mode) or this process's,
    plus ``collectors`` read now."""
    scrape = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(scrape)
    else:
        from prometheus_client import REGISTRY

        scrape.register(_Everything(REGISTRY))
    for collector in collectors:
        scrape.register(collector)
    return scrape


def init_metrics(app: Flask) -> None:
    """Expose ``GET /metrics`` in the Prometheus text format."""

    def metrics_view():
        """Prometheus metrics of this instance (all its workers)."""
        from .extensions import db
        from .ingest import EXTENSION

        ingest = current_app.extensions.get(EXTENSION)
        collectors = [DatabaseCollector(app, ingest)]
        if ingest is not None:
            collectors.append(JournalCollector(ingest.journal))
        collectors.append(WebhookCollector(db.engine))
        return Response(generate_latest(registry(*collectors)), mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


class WebhookCollector:
    """Deliveries waiting (pending, due or not) and the age of the oldest, read from the
    database when scraped (shared by every process: one reading, not a sum)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        from .webhooks.worker import queue_depth

        try:
            depth, oldest = queue_depth(self.engine)
        except Exception:  # the database is down: NaN, not a failed scrape
            depth, oldest = float("nan"), float("nan")
        yield GaugeMetricFamily(
            "relay_webhook_queue_depth", "Webhook deliveries pending", value=depth
        )
        yield GaugeMetricFamily(
            "relay_webhook_oldest_pending_age_seconds",
            "Age of the oldest pending webhook delivery, from its status change (0 when none)",
            value=oldest,
        )


def serve_worker_metrics(bind: str):
    """The worker role's metrics on ``host:port`` (a thread of the process); the server."""
    from prometheus_client import start_http_server

    host, _, port = bind.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry())
    return server


def mark_dead(pid: int) -> None:
    """gunicorn's ``child_exit``: a worker's live gauges leave the sums (its counters stay)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _Everything:
    """The process's default registry, as one collector of a scrape-time registry."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()
