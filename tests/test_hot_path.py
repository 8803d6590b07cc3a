"""The callback path's database layer: statements compiled once and run on the DBAPI cursor,
and the one write transaction around them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, insert, select

from app import rawsql, receive
from app.db_setup import write_transaction
from app.extensions import db
from app.models import CallbackEvent, Message, utcnow
from tests.conftest import CALLBACK_PASSWORD, CALLBACK_USER, basic
from tests.test_callbacks import event, make_message

pytestmark = pytest.mark.both_backends

M = Message.__table__


def test_prepared_statements_round_trip_types(app):
    """UTC datetimes, booleans and NULLs go through the column types' own processors."""
    message_id = make_message(app, carrier_id="m-bbbbbbbbbbbbbbbbbbbbbbb")
    when = datetime(2026, 11, 28, 9, 30, 15, 123456, tzinfo=UTC)
    with app.app_context():
        engine = db.engine
        with write_transaction(engine) as dbapi:
            tx = rawsql.RawTx(dbapi, engine.dialect)
            update = M.update().where(M.c.id == bindparam("_id"))
            tx.run(
                update,
                {
                    "_id": message_id,
                    "final_at": when,
                    "code_mismatch": True,
                    "delivery_code": None,
                    "updated_at": when,
                },
            )
        with write_transaction(engine) as dbapi:
            tx = rawsql.RawTx(dbapi, engine.dialect)
            row = tx.first(
                select(M.c.final_at, M.c.code_mismatch, M.c.delivery_code, M.c.status).where(
                    M.c.id == bindparam("key")
                ),
                {"key": message_id},
            )
    assert row.final_at == when and row.final_at.tzinfo is not None
    assert row.code_mismatch is True
    assert row.delivery_code is None and row.status == "accepted"
    with app.app_context():  # and the ORM reads what the raw path wrote
        message = db.session.get(Message, message_id)
        assert message.final_at == when and message.code_mismatch is True


def test_prepared_statements_are_compiled_once_per_dialect(app):
    with app.app_context():
        engine = db.engine
        with write_transaction(engine) as dbapi:
            tx = rawsql.RawTx(dbapi, engine.dialect)
            statement = select(M.c.id).where(M.c.id == bindparam("key"))
            first = tx.prepared(statement)
            assert tx.prepared(statement) is first
            assert tx.first(statement, {"key": "rm-nothing"}) is None


def test_prepared_statements_refuse_python_side_defaults(app):
    """Every value is given explicitly: a column default that SQLAlchemy would compute at
    execution time would silently be missing on the raw path."""
    with app.app_context():
        with pytest.raises(ValueError, match="every value explicitly"):
            rawsql.Prepared(insert(M), db.engine.dialect, ("id",))


def test_write_transaction_rolls_back_when_the_block_raises(app):
    message_id = make_message(app, carrier_id="m-ccccccccccccccccccccccc")
    with app.app_context():
        engine = db.engine
        with pytest.raises(RuntimeError), write_transaction(engine) as dbapi:
            receive.store_event(
                rawsql.RawTx(dbapi, engine.dialect),
                via="primary",
                method="POST",
                raw="{}",
                payload=event(tag=message_id),
            )
            raise RuntimeError("after the statements, before the commit")
        assert db.session.scalar(select(db.func.count()).select_from(CallbackEvent)) == 0
        # The writers' queue was released: the next transaction commits.
        with write_transaction(engine) as dbapi:
            stored = receive.store_event(
                rawsql.RawTx(dbapi, engine.dialect),
                via="primary",
                method="POST",
                raw="{}",
                payload=event(tag=message_id, state="sent"),
            )
        assert stored.outcome == "applied"
        assert db.session.get(Message, message_id).status == "sent"


def test_receipt_time_is_computed_on_the_raw_path(app, client, cb_auth):
    """accepted_at is read back through the result processor and used in arithmetic."""
    message_id = make_message(app, carrier_id="m-ddddddddddddddddddddddd")
    with app.app_context():
        message = db.session.get(Message, message_id)
        message.accepted_at = utcnow() - timedelta(seconds=30)
        db.session.commit()
    response = client.post(
        "/callbacks/catapult",
        headers=cb_auth,
        json=event(
            carrier_id="m-ddddddddddddddddddddddd", deliveryState="delivered", deliveryCode=0
        ),
    )
    assert response.status_code == 200
    with app.app_context():
        message = db.session.get(Message, message_id)
        assert message.status == "delivered"
        assert 29 <= message.receipt_seconds < 120


@pytest.mark.parametrize("scheme", ["basic", "BASIC"])
def test_callback_credentials_with_another_scheme_spelling_are_accepted(app, client, scheme):
    """The whole-header comparison is only a shortcut; other valid spellings still parse."""
    message_id = make_message(app, carrier_id="m-eeeeeeeeeeeeeeeeeeeeeee")
    for password, status in ((CALLBACK_PASSWORD, 200), ("nope", 401)):
        header = basic(CALLBACK_USER, password)["Authorization"].replace("Basic", scheme, 1)
        response = client.post(
            "/callbacks/catapult", headers={"Authorization": header}, json=event(tag=message_id)
        )
        assert response.status_code == status
