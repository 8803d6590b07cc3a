"""The database goes away while the dispatcher waits for the carrier: the carrier's answer is
kept until the database is back and then recorded (nothing sent twice, nothing turned
``unknown`` for want of a database), and the dispatcher pauses and resumes by itself."""

from __future__ import annotations

import logging
import threading

from app import create_app
from app.extensions import db
from tests.conftest import close_app, make_config
from tests.dispatching import Carrier, load, make_dispatcher, queue
from tests.reliability.conftest import wait_for


def test_a_carrier_answer_outlives_a_database_outage(tmp_path, pg_schema, caplog):
    cluster, url = pg_schema
    app = create_app(make_config(tmp_path, DATABASE_URL=url))
    with app.app_context():
        db.create_all()
    try:
        ids = queue(app, 20)
        carrier = Carrier()
        answer = carrier.request

        def outage_during_the_request(method, url, json=None, **kwargs):
            response = answer(method, url, json=json, **kwargs)
            if len(carrier.requests) == 1:
                cluster.halt()  # the database goes away while the carrier answers
            return response

        carrier.request = outage_during_the_request
        dispatcher, _ = make_dispatcher(app, carrier)
        stop = threading.Event()
        loop = threading.Thread(target=dispatcher.run_forever, args=(stop,), daemon=True)
        with caplog.at_level(logging.WARNING, logger="app.dispatcher"):
            loop.start()
            wait_for(lambda: "paused: database unavailable" in caplog.text, timeout=20)
            assert len(carrier.requests) == 1  # paused: nothing more goes out meanwhile
            cluster.resume()
            wait_for(lambda: "the database answers again" in caplog.text, timeout=30)
            stop.set()
            loop.join(timeout=15)
        messages = load(app, ids)
        assert {m.status for m in messages.values()} == {"accepted"}
        assert all(m.carrier_message_id for m in messages.values())
        # Every message went to the carrier once, in the one request made before the outage.
        assert sorted(p["tag"] for p in carrier.sent) == sorted(ids)
        assert caplog.text.count("paused: database unavailable") == 1  # said once, not per try
    finally:
        close_app(app)
