"""Migrations: an empty database upgraded to head has exactly the models' schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app import create_app
from app.extensions import db
from tests.conftest import make_config

pytestmark = pytest.mark.both_backends


@pytest.fixture
def migrated_app(tmp_path, db_url):
    """An app on an empty database (no create_all: the migrations build the schema)."""
    app = create_app(make_config(tmp_path, DATABASE_URL=db_url))
    yield app
    with app.app_context():
        db.engine.dispose()


def _diff(app):
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, db.metadata)


def test_upgrade_to_head_matches_the_models(migrated_app):
    app = migrated_app
    with app.app_context():
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
    assert {"messages", "callback_events", "leases", "idempotency_keys"} <= tables
    assert _diff(app) == []


def test_downgrade_to_base_and_back(migrated_app):
    app = migrated_app
    with app.app_context():
        upgrade()
        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}
        upgrade()
    assert _diff(app) == []
