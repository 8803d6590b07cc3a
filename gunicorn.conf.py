"""Gunicorn settings for the web role (override any of them with GUNICORN_CMD_ARGS)."""

import os
import shutil
import sys
import tempfile


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default  # the app's settings name the bad value and stop the start


# Metrics: each worker is a process, so prometheus-client's multiprocess mode keeps every
# worker's values in files of one directory that /metrics sums (app/metrics.py). It must be
# known before prometheus_client is first imported (workers import the app after the fork).
# PROMETHEUS_MULTIPROC_DIR, when given, must belong to this instance alone: it is wiped at start.
# Otherwise each start gets a temporary directory of its own, removed when the master exits.
_own_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = tempfile.mkdtemp(prefix="relay-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir

from app.logs import level as _log_level  # noqa: E402 - after the metrics directory is set
from app.logs import logconfig as _logconfig  # noqa: E402

bind = os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threaded workers: a client that sends its request slowly holds one thread, not the whole
# worker (with sync workers two such sockets took a two-worker relay offline). Each worker's
# callbacks are committed together by one writer thread (app/batching.py), so threads cost no
# extra flushes. `python -m bench workers` measured sync workers and 4 to 32 threads within
# 3 % of each other on callback ingest (bench/results/latest-workers.md); 16 threads leave room
# for slow sockets (a trickling client holds one) at no measured cost. A buffering proxy in
# front (deploy/nginx.conf) is what holds floods of slow clients.
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
# JSON lines for everything gunicorn logs too (app/logs.py); its access log is the relay's
# request line, one per request (app/requestlog.py). LOG_LEVEL applies to the error log.
logger_class = "app.requestlog.GunicornLogger"
logconfig_dict = _logconfig()
loglevel = _log_level().lower()
accesslog = None
errorlog = "-"
# No control socket: its default path ($HOME/.gunicorn/gunicorn.ctl) is one per user, so two
# relays on a host (a rolling restart, tests) would take it from each other.
control_socket_disable = True
# Proxy trust in step with the app's (app/proxies.py): gunicorn honours X-Forwarded-Proto (the
# scheme) from the peers of FORWARDED_ALLOW_IPS, the app X-Forwarded-* from the same peers over
# TRUSTED_PROXIES hops; with 0 hops neither believes any peer.
forwarded_allow_ips = (
    os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
    if _env_int("TRUSTED_PROXIES", 1) > 0
    else ""
)


def on_starting(server):
    """Values a previous run left in the metrics directory are not this run's."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".db"):
            os.unlink(os.path.join(folder, name))


def child_exit(server, worker):
    """A worker that exited (or was killed): its live gauges leave the sums; its counters stay,
    so totals never go backwards."""
    from app.metrics import mark_dead

    mark_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir is not None:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


def post_fork(server, worker):
    """A thread that finished its I/O (a commit, a socket read) waits for the interpreter
    lock at most this long before it is handed over, instead of the default 5 ms: the writer
    thread holds the database's write lock while it waits, so every millisecond there is
    lost for the whole host. Throughput measured the same at 0.2, 1 and 5 ms (within 3 %,
    ``python -m bench workers``); 1 ms bounds that wait."""
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
