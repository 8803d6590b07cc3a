"""The REST API: send (single, batch, idempotency), status, events, stats, OpenAPI."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select

from app import messaging
from app.extensions import db
from app.models import Message

pytestmark = pytest.mark.both_backends

SMS = {"from": "+15555550100", "to": "+15555550101", "text": "hello"}


def count_messages(app):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Message))


def test_single_send_is_queued(client, auth, app):
    response = client.post("/api/messages", json={**SMS, "tag": "order-7"}, headers=auth)
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["id"].startswith("rm-")
    assert body["tag"] == "order-7"
    assert body["from"] == SMS["from"] and body["to"] == SMS["to"]
    assert response.headers["Location"] == f"/api/messages/{body['id']}"
    assert client.get(response.headers["Location"], headers=auth).get_json()["id"] == body["id"]


def test_batch_answers_per_item_in_request_order(client, auth, app):
    items = [SMS, {**SMS, "to": ""}, {**SMS, "text": "two"}, {"to": "+15555550101"}]
    response = client.post("/api/messages", json=items, headers=auth)
    assert response.status_code == 202
    results = response.get_json()
    assert [r["result"] for r in results] == ["accepted", "error", "accepted", "error"]
    assert results[1]["error"]["code"] == "blank-property"
    assert results[3]["error"]["code"] == "missing-property"
    assert results[0]["location"] == f"/api/messages/{results[0]['id']}"
    assert count_messages(app) == 2
    with app.app_context():
        texts = [db.session.get(Message, results[i]["id"]).text for i in (0, 2)]
    assert texts == ["hello", "two"]


def test_more_than_50_is_refused_and_nothing_queued(client, auth, app):
    response = client.post("/api/messages", json=[SMS] * 51, headers=auth)
    assert response.status_code == 403
    assert response.get_json()["code"] == "multi-message-limit"
    assert count_messages(app) == 0


def test_invalid_single_message_is_400_in_catapult_shape(client, auth, app):
    response = client.post("/api/messages", json={**SMS, "callbackUrl": "http://x"}, headers=auth)
    assert response.status_code == 400
    body = response.get_json()
    assert set(body) == {"category", "code", "message", "details"}
    assert (body["category"], body["code"]) == ("bad-request", "validation-error")
    assert "callbackUrl" in body["message"]
    assert count_messages(app) == 0


@pytest.mark.parametrize(
    "data,content_type,code,status",
    [
        (b"{broken", "application/json", "invalid-json", 400),
        (b"from=+1", "application/x-www-form-urlencoded", "unsupported-media-type", 415),
        (b"{}", "text/plain", "unsupported-media-type", 415),
        (b"", "application/json", "invalid-json", 400),
        (b'"just a string"', "application/json", "validation-error", 400),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "invalid-json", 400),
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "application/json", "invalid-json", 400),
        (b"1" * 5000, "application/json", "invalid-json", 400),  # over Python's int digits
        (b'{"from": "\\u0000"}', "application/json", "validation-error", 400),
    ],
    ids=["broken", "form", "text", "empty", "string", "deep-array", "deep-object", "digits", "nul"],
)
def test_bad_bodies_get_clear_errors(client, auth, app, data, content_type, code, status):
    response = client.post(
        "/api/messages", data=data, headers={**auth, "Content-Type": content_type}
    )
    assert response.status_code == status
    assert response.get_json()["code"] == code
    assert response.get_json()["message"]
    assert count_messages(app) == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dGVzdC1hcGkta2V5Og=="}],
)
@pytest.mark.parametrize(
    "path", ["/api/messages", "/api/events", "/api/stats", "/api/messages/rm-x"]
)
def test_api_needs_a_bearer_key(client, headers, path):
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["category"] == "authentication"


def test_post_needs_a_bearer_key_and_queues_nothing(client, app):
    assert client.post("/api/messages", json=SMS).status_code == 401
    assert count_messages(app) == 0


def test_idempotency_key_replays_the_first_answer(client, auth, app):
    headers = {**auth, "Idempotency-Key": "k-1"}
    first = client.post("/api/messages", json=SMS, headers=headers)
    again = client.post("/api/messages", json=SMS, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert count_messages(app) == 1
    batch = [SMS, SMS]
    b1 = client.post("/api/messages", json=batch, headers={**auth, "Idempotency-Key": "k-2"})
    b2 = client.post("/api/messages", json=batch, headers={**auth, "Idempotency-Key": "k-2"})
    assert b1.get_json() == b2.get_json() and b2.status_code == 202
    assert count_messages(app) == 3
    reused = client.post("/api/messages", json={**SMS, "text": "other"}, headers=headers)
    assert reused.status_code == 422
    assert reused.get_json()["code"] == "idempotency-key-reused"
    assert count_messages(app) == 3


def seed(app, n, **kw):
    with app.app_context():
        start = datetime(2026, 1, 1, tzinfo=UTC)
        ids = []
        for i in range(n):
            message = messaging.enqueue(
                db.session, [{**SMS, "tag": f"t{i % 3}"}], now=start + timedelta(minutes=i)
            )[0]
            for key, value in kw.items():
                setattr(message, key, value)
            ids.append(message.id)
            db.session.flush()
        db.session.commit()
        return ids


def test_list_is_newest_first_with_a_working_cursor(client, auth, app):
    ids = seed(app, 7)
    seen = []
    url = "/api/messages?limit=3"
    pages = 0
    while url:
        page = client.get(url, headers=auth).get_json()
        seen += [m["id"] for m in page["items"]]
        url = page["next"]
        pages += 1
        if url:
            assert url.startswith("http://localhost/api/messages?")
            assert "limit=3" in url
    assert pages == 3
    assert seen == list(reversed(ids))


def test_list_filters(client, auth, app):
    ids = seed(app, 6)
    tagged = client.get("/api/messages?tag=t1", headers=auth).get_json()["items"]
    assert [m["id"] for m in tagged] == [ids[4], ids[1]]
    window = client.get(
        "/api/messages?since=2026-01-01T00:02:00Z&until=2026-01-01T00:04:00Z", headers=auth
    ).get_json()["items"]
    assert [m["id"] for m in window] == [ids[3], ids[2]]
    assert (
        client.get("/api/messages?status=queued&direction=out&from=%2B15555550100", headers=auth)
        .get_json()["items"]
        .__len__()
        == 6
    )
    assert client.get("/api/messages?status=delivered", headers=auth).get_json()["items"] == []
    assert client.get("/api/messages?to=%2B1999", headers=auth).get_json()["items"] == []


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=501", "status=lost", "since=yesterday", "cursor=%%%"]
)
def test_bad_list_arguments_are_400(client, auth, query):
    response = client.get(f"/api/messages?{query}", headers=auth)
    assert response.status_code == 400
    assert response.get_json()["code"] == "validation-error"


def test_get_by_carrier_id_and_404(client, auth, app):
    [message_id] = seed(app, 1, carrier_message_id="m-abc0000000000000000000000", status="accepted")
    body = client.get("/api/messages/m-abc0000000000000000000000", headers=auth).get_json()
    assert body["id"] == message_id and body["events"] == []
    missing = client.get("/api/messages/m-nope", headers=auth)
    assert missing.status_code == 404
    assert missing.get_json()["code"] == "message-not-found"


def test_stats_counts_rates_and_percentiles(client, auth, app, cb_auth):
    ids = seed(app, 4, status="accepted")
    with app.app_context():
        for i, message_id in enumerate(ids):
            message = db.session.get(Message, message_id)
            message.carrier_message_id = f"m-s{i}"
            message.accepted_at = datetime(2026, 1, 1, tzinfo=UTC)
        db.session.commit()
    receipts = [("delivered", 0), ("delivered", 0), ("not-delivered", 720)]
    for message_id, (state, code) in zip(ids, receipts, strict=False):
        response = client.post(
            "/callbacks/catapult/fallback",
            headers=cb_auth,
            json={
                "messageId": "m-x",
                "tag": message_id,
                "state": "sent",
                "deliveryState": state,
                "deliveryCode": code,
            },
        )
        assert response.status_code == 200
    client.post("/callbacks/catapult", headers=cb_auth, json={"messageId": "m-zzz"})
    stats = client.get("/api/stats", headers=auth).get_json()
    assert stats["counts"]["delivered"] == 2
    assert stats["counts"]["not-delivered"] == 1
    assert stats["counts"]["accepted"] == 1
    assert stats["total"] == 4
    assert stats["deliveryRate"] == pytest.approx(2 / 3)
    assert stats["timeToReceipt"]["count"] == 3
    assert stats["timeToReceipt"]["p50"] > 0
    assert stats["events"]["total"] == 4
    assert stats["events"]["viaFallback"] == 3
    assert stats["events"]["fallbackShare"] == pytest.approx(0.75)
    assert stats["events"]["unmatched"] == 1
    later = client.get("/api/stats?since=2030-01-01T00:00:00Z", headers=auth).get_json()
    assert later["total"] == 0 and later["deliveryRate"] is None


def test_events_filters(client, auth, app, cb_auth):
    [message_id] = seed(app, 1, carrier_message_id="m-ev", status="accepted")
    client.post("/callbacks/catapult", headers=cb_auth, json={"messageId": "m-ev", "state": "sent"})
    client.get("/callbacks/catapult/fallback?messageId=m-ev&state=sent", headers=cb_auth)
    client.post("/callbacks/catapult", headers=cb_auth, json={"messageId": "m-other"})
    everything = client.get("/api/events", headers=auth).get_json()["items"]
    assert len(everything) == 3
    fallback = client.get("/api/events?via=fallback", headers=auth).get_json()["items"]
    assert [(e["via"], e["method"], e["duplicate"]) for e in fallback] == [
        ("fallback", "GET", True)
    ]
    by_id = client.get("/api/events?carrierMessageId=m-ev", headers=auth).get_json()["items"]
    assert {e["messageId"] for e in by_id} == {message_id}
    matched = client.get("/api/events?matched=true&limit=1", headers=auth).get_json()
    assert len(matched["items"]) == 1 and matched["next"]


def test_reconcile_without_carrier_id_is_409(client, auth, app):
    [message_id] = seed(app, 1)
    response = client.post(f"/api/messages/{message_id}/reconcile", headers=auth)
    assert response.status_code == 409
    assert "no carrier id" in response.get_json()["message"]


def test_openapi_document_is_built_from_the_schemas(client):
    spec = client.get("/api/openapi.json").get_json()
    assert "/api/messages" in spec["paths"]
    assert "/api/messages/{message_id}/reconcile" in spec["paths"]
    assert "post" in spec["paths"]["/api/messages"]
    assert "Message" in spec["components"]["schemas"]
    assert "SendRequest" in spec["components"]["schemas"]
    props = spec["components"]["schemas"]["Message"]["properties"]
    assert {"carrierMessageId", "deliveryCode", "status", "from"} <= set(props)


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {
        "status": "ok",
        "degraded": False,
        "database": "ok",
        "journal": {"writable": True, "depth": 0, "oldestAgeSeconds": None},
    }
    metrics = client.get("/metrics").data
    assert b"relay_callbacks_total" in metrics and b"relay_journal_depth 0.0" in metrics


def test_a_tag_of_any_length_is_stored_and_found(client, auth):
    """Tags have no maximum (catapult-v1.md §1): one far over an index entry's limit works."""
    tag = secrets.token_hex(6000)  # 12,000 incompressible characters
    created = client.post("/api/messages", json={**SMS, "tag": tag}, headers=auth)
    assert created.status_code == 201
    client.post("/api/messages", json={**SMS, "tag": tag[:-1]}, headers=auth)
    found = client.get("/api/messages", query_string={"tag": tag}, headers=auth).get_json()
    assert [m["id"] for m in found["items"]] == [created.get_json()["id"]]
    assert found["items"][0]["tag"] == tag


@pytest.mark.parametrize(
    "path,query",
    [
        ("/api/messages", "limit=%D9%A3"),  # an Arabic-Indic 3: int() reads it, the doc does not
        ("/api/messages", "limit=1_0"),
        ("/api/messages", "limit=+5"),
        ("/api/messages", "since=2026-01-01"),
        ("/api/messages", "since=2026-01-01T00:00:00"),  # RFC 3339 needs the offset
        ("/api/messages", "until=20260101T000000Z"),
        ("/api/messages", "since=2026-02-30T00:00:00Z"),
        ("/api/messages", "since=2026-01-01T00:00:60Z"),  # a leap second only at 23:59:60 UTC
        ("/api/messages", "tag=a%00b"),
        ("/api/messages", "from=%00"),
        ("/api/messages", "cursor=rm-%0A"),
        ("/api/events", "matched=1"),
        ("/api/events", "matched=yes"),
        ("/api/events", "cursor=-1"),
        ("/api/events", "cursor=1%0A"),
        ("/api/events", "carrierMessageId=m-%00"),
        ("/api/stats", "since=yesterday"),
    ],
)
def test_query_arguments_are_read_as_documented(client, auth, path, query):
    """Only what the OpenAPI document allows: 400 validation-error for the rest, never a 500
    (a NUL reaching PostgreSQL was one)."""
    response = client.get(f"{path}?{query}", headers=auth)
    assert response.status_code == 400, response.data
    assert response.get_json()["code"] == "validation-error"


@pytest.mark.parametrize(
    "since",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "0000-01-01T00:00:00Z",  # valid RFC 3339; Python has no year 0
        "9999-12-31T23:59:59-23:59",  # after year 9999 in UTC
        "2026-06-30t23:59:60z",  # a leap second, lower case T and Z
        "1999-12-31T23:59:59.123456789+05:30",
    ],
)
@pytest.mark.parametrize("path", ["/api/messages", "/api/events", "/api/stats"])
def test_extreme_times_are_read_within_bounds(client, auth, app, path, since):
    seed(app, 2)
    response = client.get(f"{path}?{urlencode({'since': since, 'until': since})}", headers=auth)
    assert response.status_code == 200, response.data


def test_a_cursor_past_every_event_id_pages_from_the_top(client, auth, app, cb_auth):
    """An event cursor above what the (32-bit) id column holds is no bound, not a 500."""
    client.post("/callbacks/catapult", headers=cb_auth, json={"messageId": "m-c1"})
    for cursor in ("2147483647", "2147483648", "999999999999999999"):
        page = client.get(f"/api/events?cursor={cursor}", headers=auth)
        assert page.status_code == 200, page.data
    assert len(client.get("/api/events?cursor=2147483648", headers=auth).get_json()["items"]) == 1


def test_next_links_carry_the_last_id(client, auth, app, cb_auth):
    ids = seed(app, 3)
    page = client.get("/api/messages?limit=2", headers=auth).get_json()
    assert page["next"].endswith(f"cursor={ids[1]}")
    for i in range(3):
        client.post("/callbacks/catapult", headers=cb_auth, json={"messageId": f"m-e{i}"})
    events = client.get("/api/events?limit=2", headers=auth).get_json()
    assert events["next"].endswith(f"cursor={events['items'][-1]['id']}")
    rest = client.get(events["next"], headers=auth).get_json()
    assert len(rest["items"]) == 1 and rest["next"] is None


@pytest.mark.parametrize("path", ["/api/messages/a%00b", "/api/messages/m-%00"])
def test_an_id_with_nul_is_not_found(client, auth, path):
    for response in (
        client.get(path, headers=auth),
        client.post(f"{path}/reconcile", headers=auth),
    ):
        assert response.status_code == 404, response.data
        assert response.get_json()["code"] == "message-not-found"


@pytest.mark.parametrize("field", ["text", "tag"])
@pytest.mark.parametrize("value", ["a\x00b", "\ud800", "x\udfffy"])
def test_text_no_database_can_hold_is_refused(client, auth, app, field, value):
    """NUL (PostgreSQL refuses it) and unpaired surrogates (no UTF-8 form) in text or tag: a
    clear 400, nothing queued; on PostgreSQL this was a 500."""
    body = json.dumps({**SMS, field: value}, ensure_ascii=True)
    response = client.post(
        "/api/messages", data=body, headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.data
    assert response.get_json()["code"] == "validation-error"
    assert count_messages(app) == 0


def test_a_batch_echoing_unstorable_text_is_answered_and_replayed(client, auth, app):
    """A batch item's error repeats what it was sent; kept with an Idempotency-Key, that echo
    must be storable too."""
    body = json.dumps([SMS, {**SMS, "x\x00": 1}, {"from": "\ud800"}], ensure_ascii=True)
    headers = {**auth, "Content-Type": "application/json", "Idempotency-Key": "echo-1"}
    first = client.post("/api/messages", data=body, headers=headers)
    again = client.post("/api/messages", data=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert [r["result"] for r in first.get_json()] == ["accepted", "error", "error"]
    assert count_messages(app) == 1


@pytest.mark.parametrize("key", ["", " ", "k\x00", "é", "k" * 201, "a\tb"])
def test_idempotency_keys_are_printable_ascii(client, auth, app, key):
    response = client.post("/api/messages", json=SMS, headers={**auth, "Idempotency-Key": key})
    assert response.status_code == 400, response.data
    assert count_messages(app) == 0
