"""Shared fixtures: an app on a fresh SQLite file per test, its client and CLI runner."""

from __future__ import annotations

import base64

import pytest

from app import create_app
from app.extensions import db

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
    }
    config.update(overrides)
    return config


@pytest.fixture
def app(tmp_path):
    app = create_app(make_config(tmp_path))
    with app.app_context():
        db.create_all()
    yield app
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


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def cb_auth():
    """Basic header the carrier derives from the credentials in our callback URLs."""
    return basic(CALLBACK_USER, CALLBACK_PASSWORD)
