"""The relay served on a loopback port, and Debian's Chromium driven by Playwright.

These tests need ``/usr/bin/chromium`` (apt) and the ``playwright`` package (pip, dev extra);
``playwright install`` is never needed. When either is missing they fail, naming what to
install: a dashboard nobody has looked at in a browser is not tested.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from werkzeug.serving import make_server

from app import create_app, dashboard
from app.extensions import db
from tests.conftest import CALLBACK_PASSWORD, CALLBACK_USER, insert_message, make_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CREDENTIALS = {"username": "dash", "password": "dash-pass"}
# Records what the page's Content-Security-Policy blocked: escaped data never trips it.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  e => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium "
            "(`apt-get install -y chromium`) to run the dashboard's browser tests."
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "The playwright package is missing: `.venv/bin/pip install playwright` "
            "(part of the dev extra). No `playwright install` is needed: the tests "
            f"drive {CHROMIUM}."
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def relay(tmp_path_factory):
    """The whole relay on 127.0.0.1, port chosen by the OS, one SQLite file, refresh 1 s."""
    with served_relay(tmp_path_factory.mktemp("relay")) as served:
        yield served


@contextmanager
def served_relay(path: Path):
    """A relay of its own on a loopback port (refresh 1 s), stopped on leaving."""
    app = create_app(make_config(path, DASHBOARD_REFRESH_SECONDS=1))
    if "dashboard" not in app.blueprints:
        app.register_blueprint(dashboard.bp)
    with app.app_context():
        db.create_all()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="relay", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield SimpleNamespace(
            app=app,
            url=url,
            add=lambda **kw: add(app, **kw),
            callback=lambda carrier_id, **kw: callback(url, carrier_id, **kw),
        )
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
        app.extensions["relay_ingest"].close()
        with app.app_context():
            db.engine.dispose()


def add(app, **fields) -> str:
    """Insert a message (queued, A → B, created a second ago unless told otherwise)."""
    return insert_message(app, **fields)


def callback(url: str, carrier_id: str, via: str = "primary", **fields) -> None:
    """A carrier event through the real HTTP callback endpoint, with the callback credentials."""
    body = {
        "eventType": "sms",
        "direction": "out",
        "messageId": carrier_id,
        "from": "+15555550100",
        "to": "+15555550101",
        "state": "sent",
        "time": "2026-11-28T10:00:00.000Z",
        **fields,
    }
    path = "/callbacks/catapult" + ("/fallback" if via == "fallback" else "")
    response = requests.post(
        url + path, json=body, auth=(CALLBACK_USER, CALLBACK_PASSWORD), timeout=5
    )
    assert response.status_code == 200


def _open(browser, relay, **options):
    context = browser.new_context(http_credentials=CREDENTIALS, base_url=relay.url, **options)
    context.add_init_script(WATCH_CSP)
    page = context.new_page()
    page.set_default_timeout(8000)
    page.problems = []
    page.on("pageerror", lambda err: page.problems.append(f"page error: {err}"))
    page.on("console", lambda msg: msg.type == "error" and page.problems.append(msg.text))
    return context, page


@pytest.fixture
def page(browser, relay):
    """A laptop-sized tab already holding the dashboard's Basic credentials."""
    context, tab = _open(browser, relay, viewport={"width": 1280, "height": 860})
    yield tab
    context.close()
    assert tab.problems == []


@pytest.fixture
def phone(browser, relay):
    """A phone-sized tab (390x844, touch, mobile viewport rules)."""
    context, tab = _open(
        browser,
        relay,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    yield tab
    context.close()
    assert tab.problems == []


@pytest.fixture
def shot():
    """Keep a screenshot for people to look at (test-artifacts/ is gitignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def save(tab, name: str) -> None:
        tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    return save
