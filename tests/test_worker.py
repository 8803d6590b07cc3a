"""The worker role: the inline dispatcher thread and ``flask --app wsgi dispatch``."""

from __future__ import annotations

import signal

import pytest

from app import worker as worker_module
from app.dispatcher import Dispatcher
from app.worker import start_inline_dispatcher

pytestmark = pytest.mark.both_backends


def test_inline_dispatcher_only_in_serving_processes(app, monkeypatch):
    assert start_inline_dispatcher(app) is None  # TESTING
    app.config.update(TESTING=False, DISPATCH="worker")
    assert start_inline_dispatcher(app) is None
    app.config["DISPATCH"] = "inline"
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")
    monkeypatch.setattr("sys.argv", ["flask", "--app", "wsgi", "db", "upgrade"])
    assert start_inline_dispatcher(app) is None
    monkeypatch.setattr("sys.argv", ["flask", "--app", "wsgi", "dispatch"])
    assert start_inline_dispatcher(app) is None
    monkeypatch.delenv("FLASK_RUN_FROM_CLI")
    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    monkeypatch.delenv("SERVER_SOFTWARE", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "gunicorn", raising=False)
    assert start_inline_dispatcher(app) is None  # a plain script
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "true")
    monkeypatch.setattr("sys.argv", ["flask", "--app", "wsgi", "run", "--port", "5000"])
    assert start_inline_dispatcher(app) is not None


def test_inline_thread_starts_lazily_on_first_request(app, monkeypatch):
    app.config.update(TESTING=False, DISPATCH="inline")
    monkeypatch.delenv("FLASK_RUN_FROM_CLI", raising=False)
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/23.0.0")
    inline = start_inline_dispatcher(app)
    assert inline is not None and inline.thread is None  # nothing before a fork could happen
    client = app.test_client()
    client.get("/healthz")
    thread = inline.thread
    assert thread is not None and thread.is_alive() and thread.daemon
    client.get("/healthz")
    assert inline.thread is thread  # one per process
    inline.stop()
    assert not thread.is_alive()


def test_dispatch_command_once(runner):
    result = runner.invoke(args=["dispatch", "--once"])
    assert result.exit_code == 0, result.output
    assert "handled 0" in result.output


def test_dispatch_command_stops_gracefully_on_sigterm(runner, monkeypatch):
    seen = {}
    real_run_forever = Dispatcher.run_forever

    def run_forever(self, stop_event):
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # as if SIGTERM arrived
        seen["stopped"] = stop_event.is_set()
        real_run_forever(self, stop_event)  # returns at once: the loop sees the stop
        seen["holding"] = self.holding

    monkeypatch.setattr(worker_module.Dispatcher, "run_forever", run_forever)
    previous = signal.getsignal(signal.SIGTERM)
    result = runner.invoke(args=["dispatch"])
    assert result.exit_code == 0, result.output
    assert seen == {"stopped": True, "holding": False}
    assert signal.getsignal(signal.SIGTERM) is previous
