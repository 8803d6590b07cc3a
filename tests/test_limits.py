"""Body limits: a body over its route's limit is refused (413, JSON) before it is read, and
nothing of it is stored; authenticated or not, announced length or chunked."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import CallbackEvent, Message

pytestmark = pytest.mark.both_backends

CHUNKED = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}
# gunicorn marks its chunked input as terminated (it ends the stream itself): werkzeug reads
# such a stream only then.
TERMINATED = {"wsgi.input_terminated": True}


def _count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize("credentials", [True, False])
@pytest.mark.parametrize("path", ["/callbacks/catapult", "/callbacks/catapult/fallback"])
def test_a_callback_over_the_limit_is_refused_unread(app, client, cb_auth, credentials, path):
    headers = cb_auth if credentials else {}
    limit = app.config["CALLBACK_MAX_BODY_BYTES"]
    body = b'{"messageId": "m-x", "text": "' + b"a" * limit + b'"}'
    answer = client.post(path, data=body, headers=headers, content_type="application/json")
    assert answer.status_code == 413
    assert answer.get_json()["code"] == "request-too-large"
    assert answer.headers["Connection"] == "close"
    chunked = client.post(
        path,
        input_stream=io.BytesIO(body),
        headers={**headers, **CHUNKED},
        environ_overrides=TERMINATED,
    )
    assert chunked.status_code == 413
    assert client.get(path + "?text=" + "b" * limit, headers=headers).status_code == 413
    assert _count(app, CallbackEvent) == 0


def test_a_callback_just_under_the_limit_is_stored(app, client, cb_auth):
    limit = app.config["CALLBACK_MAX_BODY_BYTES"]
    body = b'{"messageId": "m-x", "text": "' + b"a" * (limit - 40) + b'"}'
    assert len(body) <= limit
    answer = client.post(
        "/callbacks/catapult",
        input_stream=io.BytesIO(body),
        headers={**cb_auth, **CHUNKED},
        environ_overrides=TERMINATED,
    )
    assert answer.status_code == 200
    with app.app_context():
        stored = db.session.scalars(select(CallbackEvent)).one()
        assert stored.raw == body.decode()


def test_a_body_cut_short_by_its_client_is_not_stored(app, client, cb_auth):
    """The client announced 1000 bytes and went away after 20: no event, no 200."""
    answer = client.post(
        "/callbacks/catapult",
        input_stream=io.BytesIO(b'{"messageId": "m-x",'),
        headers={**cb_auth, "Content-Type": "application/json"},
        environ_overrides={**TERMINATED, "CONTENT_LENGTH": "1000"},
    )
    assert answer.status_code == 400
    assert _count(app, CallbackEvent) == 0


def test_a_send_over_the_limit_is_refused_unread(app, client, auth):
    limit = app.config["MAX_BODY_BYTES"]
    sms = b'{"from": "+15555550100", "to": "+15555550101", "text": "'
    body = sms + b"a" * limit + b'"}'
    answer = client.post("/api/messages", data=body, headers=auth, content_type="application/json")
    assert answer.status_code == 413
    assert answer.get_json()["category"] == "bad-request"
    unauthenticated = client.post("/api/messages", data=body, content_type="application/json")
    assert unauthenticated.status_code == 413
    chunked = client.post(
        "/api/messages",
        input_stream=io.BytesIO(body),
        headers={**auth, **CHUNKED},
        environ_overrides=TERMINATED,
    )
    assert chunked.status_code == 413
    assert _count(app, Message) == 0


@pytest.mark.parametrize("path", ["/callbacks/catapult", "/callbacks/catapult/fallback"])
def test_head_on_a_callback_url_is_not_a_callback(app, client, cb_auth, path):
    """Catapult calls back with GET or POST; a HEAD (which Flask allows on every GET route)
    stores nothing."""
    answer = client.head(path + "?messageId=m-x&state=sent", headers=cb_auth)
    assert answer.status_code == 405 and answer.headers["Allow"] == "GET, POST"
    assert _count(app, CallbackEvent) == 0
