"""Prometheus metrics (multi-process aware when PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

import os

from flask import Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

CALLBACKS = Counter(
    "relay_callbacks_total", "Callback events received", ["via", "method", "outcome"]
)
SENDS = Counter("relay_carrier_sends_total", "Messages handed to the carrier", ["outcome"])
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
            depth, oldest, dead = float("nan"), float("nan"), float("nan")
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


def init_metrics(app: Flask) -> None:
    """Expose ``GET /metrics`` in the Prometheus text format."""

    def metrics_view():
        from .extensions import db
        from .ingest import EXTENSION

        ingest = current_app.extensions.get(EXTENSION)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            from prometheus_client import REGISTRY

            registry = CollectorRegistry()
            registry.register(_Everything(REGISTRY))
        if ingest is not None:
            registry.register(JournalCollector(ingest.journal))
        registry.register(WebhookCollector(db.engine))
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

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


class _Everything:
    """The process's default registry, as one collector of a scrape-time registry."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()
