"""Prometheus metrics (multi-process aware when PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

import os

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

CALLBACKS = Counter(
    "relay_callbacks_total", "Callback events received", ["via", "method", "outcome"]
)
SENDS = Counter("relay_carrier_sends_total", "Messages handed to the carrier", ["outcome"])
API_MESSAGES = Counter("relay_api_messages_total", "Messages accepted by the send API")


def init_metrics(app: Flask) -> None:
    """Expose ``GET /metrics`` in the Prometheus text format."""

    def metrics_view():
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            data = generate_latest(registry)
        else:
            data = generate_latest()
        return Response(data, mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
