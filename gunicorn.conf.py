"""Gunicorn settings for the web role (override any of them with GUNICORN_CMD_ARGS)."""

import os
import sys

bind = os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threaded workers: a client that sends its request slowly holds one thread, not the whole
# worker (with sync workers two such sockets took a two-worker relay offline). Each worker's
# callbacks are committed together by one writer thread (app/batching.py), so threads cost no
# extra flushes. The thread count and the switch interval below were chosen with
# `python -m bench ingest` (README, "Benchmarks"); a buffering proxy in front
# (deploy/nginx.conf) is what holds floods of slow clients.
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
# Callbacks must be answered far inside the carrier's 10 s; a request stuck longer than this is
# a bug, and restarting the worker is better than holding the socket.
timeout = 30
# On SIGTERM, finish in-flight callbacks before exiting (the balancer stops routing first).
graceful_timeout = 20
keepalive = 5
# A GET callback carries the event in its query string: a 2048-character text of emoji is
# ~25 KB percent-encoded, over gunicorn's 4 KB default. 0 = gunicorn's own cap (1 MB); the
# relay refuses anything over CALLBACK_MAX_BODY_BYTES itself (413).
limit_request_line = 0
accesslog = None
errorlog = "-"
# No control socket: its default path ($HOME/.gunicorn/gunicorn.ctl) is one per user, so two
# relays on a host (a rolling restart, tests) would take it from each other.
control_socket_disable = True
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def post_fork(server, worker):
    """A thread that finished its I/O (a commit, a socket read) waits for the interpreter
    lock at most this long before it is handed over, instead of the default 5 ms: the writer
    thread holds the database's write lock while it waits, so every millisecond there is
    lost for the whole host."""
    sys.setswitchinterval(float(os.environ.get("RELAY_SWITCH_INTERVAL", "0.001")))


def post_worker_init(worker):
    """Start the worker's background threads as soon as it is ready, not on its first
    request: the journal replayer (entries a dead worker left must not wait for traffic) and
    the inline dispatcher (messages queued before a restart neither). Threads start after the
    fork, never in the master."""
    extensions = worker.wsgi.extensions
    ingest = extensions.get("relay_ingest")
    if ingest is not None:
        ingest.start()
    inline = extensions.get("relay_inline_dispatcher")
    if inline is not None:
        inline.ensure_started()


def worker_exit(server, worker):
    """After the worker's last request (graceful stop): let the inline dispatcher finish and
    record its batch and hand the lease over, then end the callback threads."""
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {})
    inline = extensions.get("relay_inline_dispatcher")
    if inline is not None:
        inline.stop()
    ingest = extensions.get("relay_ingest")
    if ingest is not None:
        ingest.close()
