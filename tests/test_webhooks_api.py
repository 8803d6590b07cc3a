"""``/api/webhooks``: endpoints saved, listed, changed and deleted; bad bodies are 400; URLs
that would reach the relay's own network are refused (422) unless WEBHOOK_ALLOW_PRIVATE."""

from __future__ import annotations

import base64

import pytest

from app.config import load_settings

pytestmark = pytest.mark.both_backends

PUBLIC = "https://93.184.215.14/hooks"  # an IP literal: no DNS needed, never called here


def create(client, auth, **body):
    return client.post("/api/webhooks", json={"url": PUBLIC, "events": ["*"], **body}, headers=auth)


def test_create_get_list_update_delete(client, auth):
    response = create(
        client, auth, events=["message.sent", "message.sent", "message.error"], description="orders"
    )
    assert response.status_code == 201
    made = response.get_json()
    assert made["id"].startswith("wh-") and made["enabled"] is True
    assert made["events"] == ["message.sent", "message.error"]  # each once, in order
    assert made["secret"].startswith("whsec_")
    assert len(base64.b64decode(made["secret"][6:])) == 32
    url = f"/api/webhooks/{made['id']}"
    assert client.get(url, headers=auth).get_json() == made
    other = create(client, auth, events=["message.delivered", "*"]).get_json()
    assert other["events"] == ["*"]
    page = client.get("/api/webhooks?limit=1", headers=auth).get_json()
    assert [w["id"] for w in page["items"]] == [other["id"]] and page["next"]
    second = client.get(page["next"], headers=auth).get_json()
    assert [w["id"] for w in second["items"]] == [made["id"]] and second["next"] is None

    changed = client.patch(
        url,
        json={"enabled": False, "rotateSecret": True, "events": ["message.delivered"]},
        headers=auth,
    )
    assert changed.status_code == 200
    body = changed.get_json()
    assert body["enabled"] is False and body["events"] == ["message.delivered"]
    assert body["secret"] != made["secret"] and body["url"] == PUBLIC
    assert body["description"] == "orders"
    assert client.delete(url, headers=auth).status_code == 204
    assert client.get(url, headers=auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"url": PUBLIC},
        {"events": ["*"]},
        {"url": PUBLIC, "events": []},
        {"url": PUBLIC, "events": ["message.queued"]},
        {"url": "ftp://93.184.215.14/x", "events": ["*"]},
        {"url": "https://user:pw@93.184.215.14/x", "events": ["*"]},
        {"url": "https://93.184.215.14/x#frag", "events": ["*"]},
        {"url": PUBLIC, "events": ["*"], "description": "a\x00b"},
        {"url": PUBLIC, "events": ["*"], "secret": "whsec_mine"},
        ["not", "an", "object"],
    ],
)
def test_invalid_bodies_are_400(client, auth, body):
    response = client.post("/api/webhooks", json=body, headers=auth)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["code"] == "validation-error"


def test_patch_is_strict_too(client, auth):
    url = f"/api/webhooks/{create(client, auth).get_json()['id']}"
    assert client.patch(url, json={"enabled": "yes"}, headers=auth).status_code == 400
    assert client.patch(url, data="x", headers=auth).status_code == 415
    assert client.patch("/api/webhooks/wh-nobody", json={}, headers=auth).status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/hook",  # a name resolving to 127.0.0.1
        "http://127.0.0.1/hook",
        "http://127.1/hook",  # the same address, spelt short
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data",  # the cloud's metadata service
        "http://[fe80::1]/hook",
        "http://0.0.0.0/hook",
        "http://no-such-host.invalid/hook",
    ],
)
def test_urls_into_the_relays_own_network_are_refused(client, auth, url):
    response = create(client, auth, url=url)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["code"] == "url-refused"
    assert client.get("/api/webhooks", headers=auth).get_json()["items"] == []
    made = create(client, auth).get_json()
    response = client.patch(f"/api/webhooks/{made['id']}", json={"url": url}, headers=auth)
    assert response.status_code == 422


def test_private_addresses_are_allowed_when_configured(app, client, auth):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    assert create(client, auth, url="http://localhost:8080/hook").status_code == 201


def test_deliveries_of_unknown_ids_are_404(client, auth):
    made = create(client, auth).get_json()
    base = f"/api/webhooks/{made['id']}/deliveries"
    assert client.get(base, headers=auth).get_json() == {"items": [], "next": None}
    for delivery_id in ("1", "0", "99999999999999", "abc"):
        assert client.post(f"{base}/{delivery_id}/retry", headers=auth).status_code == 404
    assert client.get("/api/webhooks/wh-nobody/deliveries", headers=auth).status_code == 404
    assert client.get(f"{base}?status=lost", headers=auth).status_code == 400
    assert client.get("/api/webhooks", headers={}).status_code == 401


@pytest.mark.parametrize(
    "raw,value,error",
    [
        ("", (0, 5, 300, 1800, 7200, 18000, 36000, 36000), None),
        ("0, 1,2", (0, 1, 2), None),
        ("0,x", None, "WEBHOOK_RETRY_SCHEDULE"),
        ("-1", None, "WEBHOOK_RETRY_SCHEDULE"),
        (",", None, "WEBHOOK_RETRY_SCHEDULE"),
    ],
)
def test_retry_schedule_setting(raw, value, error):
    settings = load_settings({"RELAY_ENV": "testing", "WEBHOOK_RETRY_SCHEDULE": raw})
    if error:
        assert any(e.startswith(error) for e in settings.errors), settings.errors
    else:
        assert settings.values["WEBHOOK_RETRY_SCHEDULE"] == value and not settings.errors


@pytest.mark.parametrize("raw,value", [("", False), ("0", False), ("1", True), ("true", True)])
def test_allow_private_setting(raw, value):
    settings = load_settings({"RELAY_ENV": "testing", "WEBHOOK_ALLOW_PRIVATE": raw})
    assert settings.values["WEBHOOK_ALLOW_PRIVATE"] is value and not settings.errors
    assert load_settings({"RELAY_ENV": "testing", "WEBHOOK_ALLOW_PRIVATE": "yes"}).errors
