"""GET one message and the list with filters and Link paging (catapult-v1.md section 2)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

RESOURCE_KEYS = {
    "id", "messageId", "from", "to", "direction", "text", "media", "state", "time",
    "callbackUrl", "callbackTimeout", "fallbackUrl", "tag", "receiptRequested",
    "deliveryState", "deliveryCode", "deliveryDescription", "segmentCount",
}  # fmt: skip
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_get_message_has_every_resource_field(sandbox, api, send, body, receiver):
    response = send(
        body(
            text="a" * 161,
            tag="rm-1",
            receiptRequested="all",
            callbackUrl=receiver.url("/cb"),
            fallbackUrl=receiver.url("/fb"),
            callbackTimeout="3000",
        )
    )
    message_id = response.headers["Location"].rsplit("/", 1)[1]
    sandbox.wait_idle()
    got = api.get(response.headers["Location"], timeout=5)
    assert got.status_code == 200
    assert got.headers["Content-Type"] == "application/json"
    resource = got.json()
    assert set(resource) == RESOURCE_KEYS
    assert resource["id"] == resource["messageId"] == message_id
    assert (resource["from"], resource["to"]) == ("+19195551212", "+19195551213")
    assert resource["direction"] == "out"
    assert resource["media"] == []
    assert TIME.fullmatch(resource["time"])
    assert resource["callbackUrl"] == receiver.url("/cb")
    assert resource["fallbackUrl"] == receiver.url("/fb")
    assert resource["callbackTimeout"] == 3000
    assert resource["tag"] == "rm-1"
    assert resource["receiptRequested"] == "all"
    assert resource["segmentCount"] == 2  # 161 GSM-7 characters
    # The final truth after the receipt (perfect scenario: delivered).
    assert resource["state"] == "sent"
    assert resource["deliveryState"] == "delivered"
    assert resource["deliveryCode"] == "0"
    assert resource["deliveryDescription"] == "Message delivered to carrier"


@pytest.mark.parametrize(
    ("text", "segments"),
    [("a" * 160, 1), ("a" * 161, 2), ("ж" * 70, 1), ("ж" * 71, 2), ("\U0001f600" * 36, 2)],
)
def test_segment_count_on_the_resource(sandbox, api, send, body, text, segments):
    location = send(body(text=text)).headers["Location"]
    assert api.get(location, timeout=5).json()["segmentCount"] == segments


def ids_of(items: list[dict]) -> list[str]:
    return [item["id"] for item in items]


def create(send, body, count: int, **fields) -> list[str]:
    results = send([body(text=f"n{i}", **fields) for i in range(count)]).json()
    return [r["location"].rsplit("/", 1)[1] for r in results]


def test_list_default_size_is_25_with_a_next_link(sandbox, api, send, body):
    create(send, body, 30)
    response = api.get(sandbox.messages_url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert len(response.json()) == 25
    assert set(response.json()[0]) == RESOURCE_KEYS
    link = response.headers["Link"]
    match = re.fullmatch(
        r'<(http://127\.0\.0\.1:\d+/v1/users/u-sandbox/messages\?.*)>; rel="next"', link
    )
    assert match, link
    assert "sortKeyLT=" in match.group(1) and "size=25" in match.group(1)


@pytest.mark.parametrize("order", ["asc", "desc", None])
def test_follow_next_links_verbatim_until_exhausted(sandbox, api, send, body, order):
    created = create(send, body, 23)
    params = {"size": 5} if order is None else {"size": 5, "sortOrder": order}
    response = api.get(sandbox.messages_url, params=params, timeout=5)
    seen: list[str] = []
    pages = 0
    while True:
        assert response.status_code == 200
        page = response.json()
        assert 1 <= len(page) <= 5
        times = [item["time"] for item in page]
        assert times == sorted(times, reverse=order == "desc")
        seen += ids_of(page)
        pages += 1
        if "next" not in response.links:
            assert "Link" not in response.headers
            break
        next_url = response.links["next"]["url"]
        assert next_url.startswith(sandbox.messages_url + "?")
        if order:
            assert f"sortOrder={order}" in next_url
        response = api.get(next_url, timeout=5)  # verbatim, as the python SDK does
    assert pages == 5
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == set(created)


def test_newest_messages_are_selected_first(sandbox, api, send, body):
    created = create(send, body, 10)
    first = api.get(sandbox.messages_url, params={"size": 3}, timeout=5).json()
    assert set(ids_of(first)) == set(created[-3:])
    desc = api.get(sandbox.messages_url, params={"size": 3, "sortOrder": "desc"}, timeout=5)
    assert ids_of(desc.json()) == list(reversed(created[-3:]))
    asc = api.get(sandbox.messages_url, params={"size": 3, "sortOrder": "asc"}, timeout=5)
    assert ids_of(asc.json()) == created[-3:]


def test_from_and_to_filters_and_they_survive_paging(sandbox, api, send, body):
    mine = create(send, body, 7, **{"from": "+15550000001"})
    create(send, body, 4, **{"from": "+15550000002"})
    create(send, body, 3, to="+15550000009")
    response = api.get(sandbox.messages_url, params={"from": "+15550000001", "size": 3}, timeout=5)
    seen = []
    while True:
        page = response.json()
        assert all(item["from"] == "+15550000001" for item in page)
        seen += ids_of(page)
        if "next" not in response.links:
            break
        assert "from=%2B15550000001" in response.links["next"]["url"]
        response = api.get(response.links["next"]["url"], timeout=5)
    assert sorted(seen) == sorted(mine)
    to = api.get(sandbox.messages_url, params={"to": "+15550000009"}, timeout=5).json()
    assert len(to) == 3 and all(item["to"] == "+15550000009" for item in to)


def test_unencoded_plus_in_a_phone_filter_is_tolerated(sandbox, api, send, body):
    create(send, body, 2, **{"from": "+15550000001"})
    response = api.get(sandbox.messages_url + "?from=+15550000001", timeout=5)
    assert len(response.json()) == 2


def test_direction_state_and_delivery_state_filters(make_sandbox, http, body):
    # Failures and inbound replies, decided by the seed; every filter must agree with them.
    sandbox = make_sandbox(failure_share=0.3, error_share=0.3, inbound_share=0.5, seed=11)
    http.auth = sandbox.auth
    items = [body(text=f"n{i}", receiptRequested="all") for i in range(30)]
    assert http.post(sandbox.messages_url, json=items, timeout=5).status_code == 202
    sandbox.wait_idle()
    everything = http.get(sandbox.messages_url, params={"size": 1000}, timeout=5).json()
    assert len(everything) > 30  # inbound replies were added
    for name, values in (
        ("direction", ["in", "out"]),
        ("state", ["received", "sent", "error", "queued"]),
        ("deliveryState", ["waiting", "delivered", "not-delivered"]),
    ):
        total = 0
        for value in values:
            page = http.get(
                sandbox.messages_url, params={name: value, "size": 1000}, timeout=5
            ).json()
            assert all(item[name] == value for item in page)
            expected = [item for item in everything if item[name] == value]
            assert sorted(ids_of(page)) == sorted(ids_of(expected))
            total += len(page)
        if name != "deliveryState":
            assert total == len(everything)
    in_page = http.get(sandbox.messages_url, params={"direction": "in"}, timeout=5).json()
    assert in_page and all(item["state"] == "received" for item in in_page)


def test_date_time_filters(sandbox, api, send, body):
    created = create(send, body, 5)
    later = create(send, body, 3)
    pivot = api.get(f"{sandbox.messages_url}/{later[0]}", timeout=5).json()["time"]
    moment = datetime.strptime(pivot, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    stamp = moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    since = api.get(
        sandbox.messages_url, params={"fromDateTime": stamp, "size": 100}, timeout=5
    ).json()
    assert set(later) <= set(ids_of(since))
    assert all(item["time"] >= pivot for item in since)
    until = api.get(
        sandbox.messages_url, params={"toDateTime": stamp, "size": 100}, timeout=5
    ).json()
    assert all(item["time"] <= pivot for item in until)
    assert later[0] in ids_of(until)
    today = moment.strftime("%Y-%m-%d")
    tomorrow = (moment + timedelta(days=1)).strftime("%Y-%m-%d")
    for params, count in (
        ({"fromDateTime": today}, 8),  # trailing parts optional: midnight
        ({"fromDateTime": moment.strftime("%Y-%m-%d %H")}, 8),
        ({"fromDateTime": tomorrow}, 0),
        ({"toDateTime": "2001-01-01 00:00:00"}, 0),
        ({"fromDateTime": "2001-01", "toDateTime": tomorrow}, 8),
        ({"fromDateTime": pivot}, len(since)),  # ISO with T and Z, as the Ruby SDK sends
    ):
        response = api.get(sandbox.messages_url, params={**params, "size": 100}, timeout=5)
        assert response.status_code == 200, response.text
        assert len(response.json()) == count, params
    assert len(created) == 5


@pytest.mark.parametrize(
    "params",
    [
        {"size": 0},
        {"size": 1001},
        {"size": "ten"},
        {"direction": "sideways"},
        {"state": "lost"},
        {"deliveryState": "maybe"},
        {"sortOrder": "random"},
        {"fromDateTime": "yesterday"},
        {"toDateTime": "2024-13-45"},
        {"sortKeyLT": "abc"},
    ],
)
def test_list_rejects_bad_parameters(sandbox, api, check_error, params):
    check_error(
        api.get(sandbox.messages_url, params=params, timeout=5),
        400,
        "bad-request",
        "validation-error",
    )


def test_size_1000_is_allowed(sandbox, api):
    assert api.get(sandbox.messages_url, params={"size": 1000}, timeout=5).status_code == 200
