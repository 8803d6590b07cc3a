"""Gunicorn settings for the web role (override any of them with GUNICORN_CMD_ARGS)."""

import os

bind = os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
# Callbacks must be answered far inside the carrier's 10 s; a request stuck longer than this is
# a bug, and restarting the worker is better than holding the socket.
timeout = 30
# On SIGTERM, finish in-flight callbacks before exiting (the balancer stops routing first).
graceful_timeout = 20
keepalive = 5
accesslog = None
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def post_worker_init(worker):
    """Start the inline dispatcher as soon as a worker is ready, not on its first request
    (messages queued before a restart must not wait for traffic). Threads start after the
    fork, never in the master."""
    inline = worker.wsgi.extensions.get("relay_inline_dispatcher")
    if inline is not None:
        inline.ensure_started()
