"""Shared fixtures: an app on a fresh SQLite file per test, its client and CLI runner."""

from __future__ import annotations

import base64
import os
import uuid

import pytest

from app import create_app
from app.extensions import db
from tests import pg

API_KEY = "test-api-key"
CALLBACK_USER = "cb-user"
CALLBACK_PASSWORD = "cb-pass"


def make_config(tmp_path, **overrides):
    """Test settings: every secret set explicitly, the dispatcher off unless a test starts it."""
    config = {
        "TESTING": True,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'relay.sqlite3'}",
        "PUBLIC_BASE_URL": "http://relay.test",
        "FALLBACK_BASE_URL": "http://fallback.relay.test",
        "CALLBACK_USERNAME": CALLBACK_USER,
        "CALLBACK_PASSWORD": CALLBACK_PASSWORD,
        "CATAPULT_API_URL": "http://carrier.test",
        "CATAPULT_USER_ID": "u-test",
        "CATAPULT_API_TOKEN": "t-test",
        "CATAPULT_API_SECRET": "s-test",
        "API_KEYS": [API_KEY],
        "DASHBOARD_USERNAME": "dash",
        "DASHBOARD_PASSWORD": "dash-pass",
        "SECRET_KEY": "test-secret",
        "DISPATCH": "off",
        "JOURNAL_DIR": str(tmp_path / "journal"),
    }
    config.update(overrides)
    return config


def pytest_addoption(parser):
    parser.addoption(
        "--backends",
        default="sqlite,postgresql",
        help="database backends for modules marked 'both_backends'",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "both_backends: run this module's database tests on SQLite and PostgreSQL"
    )


def pytest_generate_tests(metafunc):
    """Modules marked ``both_backends`` run every test that touches the database twice."""
    if "db_url" not in metafunc.fixturenames:
        return
    backends = ["sqlite"]
    if metafunc.definition.get_closest_marker("both_backends"):
        backends = metafunc.config.getoption("--backends").split(",")
    metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request):
    return request.param


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server: RELAY_TEST_POSTGRES_URL, or a temporary cluster."""
    url = os.environ.get("RELAY_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    cluster = pg.TempCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def db_url(backend, tmp_path, request):
    """The database of one test: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.sqlite3'}"
        return
    server = request.getfixturevalue("postgres_server")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield pg.create_schema(server, schema)
    pg.drop_schema(server, schema)


@pytest.fixture
def app(tmp_path, db_url):
    app = create_app(make_config(tmp_path, DATABASE_URL=db_url))
    with app.app_context():
        db.create_all()
    yield app
    close_app(app)


def close_app(app):
    """Stop the app's callback threads and close its database connections."""
    from app.ingest import EXTENSION

    app.extensions[EXTENSION].close()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def make_app(tmp_path, db_url):
    """More apps on the test's database (each its own engine and pool, like processes)."""
    apps = []

    def build(**overrides):
        app = create_app(make_config(tmp_path, DATABASE_URL=db_url, **overrides))
        with app.app_context():
            db.create_all()
        apps.append(app)
        return app

    yield build
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def auth():
    """Bearer header for /api."""
    return {"Authorization": f"Bearer {API_KEY}"}


def insert_message(app, **fields) -> str:
    """Insert a message row as it is (queued, A → B, created a second ago unless told
    otherwise), for tests that need data no API call would make."""
    from datetime import timedelta

    from app.models import Message, utcnow

    now = utcnow() - timedelta(seconds=1)
    values = {
        "direction": "out",
        "from_number": "+15555550100",
        "to_number": "+15555550101",
        "text": "hello",
        "status": "queued",
        "created_at": now,
        "updated_at": now,
        "attempts": 0,
        "code_mismatch": False,
        **fields,
    }
    with app.app_context():
        message = Message(**values)
        db.session.add(message)
        db.session.commit()
        return message.id


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def cb_auth():
    """Basic header the carrier derives from the credentials in our callback URLs."""
    return basic(CALLBACK_USER, CALLBACK_PASSWORD)
