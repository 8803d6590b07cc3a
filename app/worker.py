"""The worker role: the dispatcher in its own process (``flask --app wsgi dispatch``) or as a
thread of each serving process (``DISPATCH=inline``); the lease keeps one of them active.
Each of them also runs a webhook delivery worker (``webhooks.worker``): all of those are
active at once, each claiming rows of its own."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from .dispatcher import Dispatcher
from .extensions import db
from .ingest import EXTENSION as INGEST
from .webhooks.worker import WorkerThread

log = logging.getLogger(__name__)


class InlineDispatcher:
    """A dispatcher thread in a serving process, started lazily on its first request so that
    no thread exists before gunicorn forks its workers (threads do not survive a fork)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._pid: int | None = None
        self.thread: threading.Thread | None = None
        self.stop_event = threading.Event()
        self.dispatcher: Dispatcher | None = None
        self.webhooks: WorkerThread | None = None

    def ensure_started(self) -> None:
        """``before_request`` hook: start this process's thread once (cheap after that)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A fresh state per process: after a fork the parent's thread does not exist here.
            self.stop_event = threading.Event()
            self.dispatcher = Dispatcher(self.app)
            self.thread = threading.Thread(
                target=self.dispatcher.run_forever,
                args=(self.stop_event,),
                name="relay-dispatcher",
                daemon=True,
            )
            self.thread.start()
            self.webhooks = webhook_worker(self.app).start()
            self._pid = os.getpid()
            atexit.register(self.stop)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread: it finishes (and records) an in-flight request, then lets go of
        the lease so a standby takes over at once."""
        self.stop_event.set()
        if self.webhooks is not None and self._pid == os.getpid():
            self.webhooks.stop_event.set()  # both stop at once, then each is waited for
            self.webhooks.stop(timeout)
        if self.thread is not None and self._pid == os.getpid():
            self.thread.join(timeout)


def webhook_worker(app: Flask) -> WorkerThread:
    """This process's webhook delivery worker (not started yet)."""
    with app.app_context():
        engine = db.engine
    return WorkerThread(engine, app.config)


def _serving_process() -> bool:
    """True in a gunicorn worker or under ``flask run``; False in other CLI commands."""
    if os.environ.get("FLASK_RUN_FROM_CLI"):
        from . import _cli_command  # the same argv parsing the factory uses

        return _cli_command() == "run"
    if os.environ.get("WERKZEUG_RUN_MAIN"):
        return True
    return "gunicorn" in sys.modules or "gunicorn" in os.environ.get("SERVER_SOFTWARE", "")


def start_inline_dispatcher(app: Flask) -> InlineDispatcher | None:
    """With ``DISPATCH=inline``, run a dispatcher thread in each serving process (the lease
    keeps one active); never under TESTING and never in CLI commands such as ``db upgrade``."""
    if app.config.get("TESTING") or app.config.get("DISPATCH") != "inline":
        return None
    if not _serving_process():
        return None
    inline = InlineDispatcher(app)
    app.before_request(inline.ensure_started)
    app.extensions["relay_inline_dispatcher"] = inline
    return inline


@click.command("dispatch")
@click.option("--once", is_flag=True, help="Run a single iteration and exit.")
@with_appcontext
def dispatch_command(once: bool) -> None:
    """Run the dispatcher in the foreground (the worker role) until SIGTERM or SIGINT."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not app.config.get("TESTING"):  # a test's process keeps its own logging
        from .logs import configure

        configure(app)  # JSON lines, like the web role's
    dispatcher = Dispatcher(app)
    if once:
        handled = dispatcher.run_once()
        dispatcher.release()
        click.echo(f"handled {handled}")
        return
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now, even mid-request
        log.info("%s: finishing the current batch", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("dispatcher %s: running (Ctrl-C to stop)", dispatcher.holder)
    # The host's callback journal too: entries left by web processes that died are replayed
    # even while none of them runs (the worker shares JOURNAL_DIR when it shares the host).
    ingest = app.extensions[INGEST]
    ingest.start()
    webhooks = webhook_worker(app).start()
    metrics = None
    if app.config.get("WORKER_METRICS_BIND"):
        from .metrics import serve_worker_metrics

        metrics = serve_worker_metrics(app.config["WORKER_METRICS_BIND"])
        log.info("worker metrics on %s", app.config["WORKER_METRICS_BIND"])
    try:
        dispatcher.run_forever(stop)
    finally:
        webhooks.stop()
        ingest.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics is not None:
            metrics.shutdown()
