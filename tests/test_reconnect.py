"""The callback path after PostgreSQL dropped the relay's connections (a restart, a failover).

Catapult tries the primary URL once and the fallback once: a callback answered 500 because a
pooled connection went stale while idle is half of a receipt's chances gone, and every worker
holds such a connection after the server comes back. Those connections fail on their first
statement, before anything is sent that could commit, so the transaction runs again on a fresh
connection."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy import func, select

from app import create_app
from app.extensions import db
from app.ingest import EXTENSION
from app.models import CallbackEvent, Message
from tests import pg
from tests.conftest import CALLBACK_PASSWORD, CALLBACK_USER, basic, make_config
from tests.test_callbacks import event, make_message

AUTH = basic(CALLBACK_USER, CALLBACK_PASSWORD)


@pytest.fixture
def pg_app(postgres_server, tmp_path):
    """An app on a fresh schema of the tests' PostgreSQL server (a PostgreSQL-only concern:
    this module runs there whatever ``--backends`` says)."""
    server = postgres_server
    schema = f"t_{uuid.uuid4().hex[:12]}"
    app = create_app(make_config(tmp_path, DATABASE_URL=pg.create_schema(server, schema)))
    with app.app_context():
        db.create_all()
    yield app, server
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    pg.drop_schema(server, schema)


def _pooled_backends(app) -> list[int]:
    """Server pids of the connections resting in the app's pool, and of the one the callback
    writer keeps for itself."""
    with app.app_context():
        pool = db.engine.pool
        fairies = [db.engine.raw_connection() for _ in range(pool.checkedin())]
        pids = [fairy.dbapi_connection.info.backend_pid for fairy in fairies]
        for fairy in fairies:
            fairy.close()
    held = app.extensions[EXTENSION].held.fairy
    if held is not None:
        pids.append(held.dbapi_connection.info.backend_pid)
    return pids


def test_a_callback_on_a_connection_the_server_dropped_is_stored_once(pg_app):
    app, server = pg_app
    client = app.test_client()
    message_id = make_message(app, carrier_id="m-fffffffffffffffffffffff")
    assert (
        client.post(
            "/callbacks/catapult", json=event(tag=message_id, state="sent"), headers=AUTH
        ).status_code
        == 200
    )
    pids = _pooled_backends(app)
    assert pids, "the callback left its connection in the pool"
    with psycopg.connect(pg.plain_url(server), autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    receipt = event(tag=message_id, deliveryState="delivered", deliveryCode=0)
    response = client.post("/callbacks/catapult", json=receipt, headers=AUTH)

    assert response.status_code == 200
    with app.app_context():
        assert db.session.get(Message, message_id).status == "delivered"
        stored = db.session.scalar(select(func.count()).select_from(CallbackEvent))
        assert stored == 2  # the sent event and the receipt, each once
        assert set(_pooled_backends(app)).isdisjoint(pids)
