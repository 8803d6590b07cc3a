"""Deployment tests: the relay as it is deployed (gunicorn with gunicorn.conf.py, the worker
role, nginx with deploy/nginx.conf), on loopback ports the OS picks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.extensions import db
from tests.conftest import close_app, make_config
from tests.servers import Dispatcher, Gunicorn, relay_env


def create_tables(tmp_path, url: str) -> str:
    """The relay's tables on ``url``; returns it."""
    app = create_app(make_config(tmp_path, DATABASE_URL=url))
    try:
        with app.app_context():
            db.create_all()
    finally:
        close_app(app)
    return url


@pytest.fixture
def sqlite_db(tmp_path) -> str:
    return create_tables(tmp_path, f"sqlite:///{tmp_path / 'relay.sqlite3'}")


@pytest.fixture
def processes(tmp_path):
    """Start relays (``web``) and dispatchers (``worker``); all stopped at the end."""
    started: list = []

    class Starter:
        def web(self, database_url: str, workers: int = 2, name: str | None = None, **env):
            journal = env.pop("JOURNAL_DIR", tmp_path / f"journal-{len(started)}")
            log = tmp_path / f"{name or f'gunicorn-{len(started)}'}.log"
            relay = Gunicorn(relay_env(database_url, journal, **env), log, workers=workers)
            started.append(relay)
            relay.wait_ready()
            return relay

        def worker(self, env: dict, name: str):
            worker = Dispatcher(env, tmp_path / f"{name}.log")
            worker.log_path = tmp_path / f"{name}.log"
            started.append(worker)
            return worker

    yield Starter()
    for process in reversed(started):
        process.stop()


def json_lines(path: Path) -> list[dict]:
    """Every line of a log as JSON (a line that is not JSON fails the test)."""
    lines = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {line!r}") from None
    return lines


def wait_for_lines(path: Path, predicate, timeout: float = 10.0) -> list[dict]:
    """The log's JSON lines once ``predicate(lines)`` holds (a request's line is written just
    after its answer has gone out, so the last ones may still be on their way)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = json_lines(path)
        if predicate(lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{Path(path).name}: the lines awaited did not come")
        time.sleep(0.1)


def scrape(url: str) -> dict[tuple, float]:
    """``/metrics`` as {(sample name, sorted labels): value}, on a new connection each time
    (so that successive scrapes can be answered by different workers)."""
    text = requests.get(f"{url}/metrics", timeout=10, headers={"Connection": "close"}).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples
