"""POST /v1/users/{userId}/messages: auth, status codes, headers, multi-send (catapult-v1.md 1)."""

from __future__ import annotations

import re

import pytest

ID = r"m-[a-z2-7]{23}"


def location_re(sandbox) -> re.Pattern[str]:
    return re.compile(re.escape(sandbox.messages_url) + "/(" + ID + ")")


def test_single_send_is_201_with_absolute_location_and_readable_at_once(sandbox, api, send, body):
    response = send(body(text="first", tag="t-1"))
    assert response.status_code == 201
    # An empty body and no JSON content type: v1 SDKs parse every body labelled JSON.
    assert response.content == b""
    assert response.headers["Content-Length"] == "0"
    assert "Content-Type" not in response.headers
    match = location_re(sandbox).fullmatch(response.headers["Location"])
    assert match, response.headers["Location"]
    # Ruby and Java GET the message right after creating it.
    got = api.get(response.headers["Location"], timeout=5)
    assert got.status_code == 200
    assert got.json()["id"] == match.group(1)
    assert got.json()["text"] == "first"
    assert got.json()["tag"] == "t-1"


def test_public_url_is_the_base_of_location(make_sandbox, http, body):
    sandbox = make_sandbox(public_url="https://api.example.test/")
    response = http.post(sandbox.messages_url, json=body(), auth=sandbox.auth, timeout=5)
    assert response.status_code == 201
    assert re.fullmatch(
        r"https://api\.example\.test/v1/users/u-sandbox/messages/" + ID,
        response.headers["Location"],
    )


@pytest.mark.parametrize(
    "auth",
    [None, ("sandbox-token", "wrong"), ("wrong", "sandbox-secret"), ("", "")],
    ids=["missing", "bad-secret", "bad-token", "empty"],
)
@pytest.mark.parametrize("method, suffix", [("POST", ""), ("GET", ""), ("GET", "/m-x")])
def test_bad_credentials_are_401_authentication(
    sandbox, http, body, check_error, auth, method, suffix
):
    response = http.request(
        method, sandbox.messages_url + suffix, json=body(), auth=auth, timeout=5
    )
    error = check_error(response, 401, "authentication", "unauthorized")
    details = {d["name"]: d["value"] for d in error["details"]}
    assert details["requestMethod"] == method
    assert details["remoteAddress"] == "127.0.0.1"
    assert details["requestPath"] == f"v1/users/u-sandbox/messages{suffix}"
    assert sandbox.store.records() == []


def test_non_ascii_credentials_are_refused_not_crashed(sandbox, http, body, check_error):
    response = http.post(sandbox.messages_url, json=body(), auth=("t\u00f6ken", "s"), timeout=5)
    check_error(response, 401, "authentication", "unauthorized")


def test_bearer_scheme_is_not_accepted(sandbox, http, body, check_error):
    response = http.post(
        sandbox.messages_url,
        json=body(),
        headers={"Authorization": "Bearer sandbox-token"},
        timeout=5,
    )
    check_error(response, 401, "authentication", "unauthorized")


def test_custom_credentials(make_sandbox, http, body, check_error):
    sandbox = make_sandbox(user_id="u-other", token="tok", secret="sec")
    assert sandbox.messages_url.endswith("/v1/users/u-other/messages")
    ok = http.post(sandbox.messages_url, json=body(), auth=("tok", "sec"), timeout=5)
    assert ok.status_code == 201
    default = http.post(
        sandbox.messages_url, json=body(), auth=("sandbox-token", "sandbox-secret"), timeout=5
    )
    check_error(default, 401, "authentication", "unauthorized")


def test_wrong_user_in_path_is_401_user_access_denied(sandbox, api, body, check_error):
    url = sandbox.messages_url.replace("/u-sandbox/", "/u-someone-else/")
    error = check_error(
        api.post(url, json=body(), timeout=5), 401, "authorization", "user-access-denied"
    )
    assert "u-someone-else" in error["message"]
    assert {"name": "userId", "value": "u-someone-else"} in error["details"]
    check_error(api.get(url + "/m-abc", timeout=5), 401, "authorization", "user-access-denied")


@pytest.mark.parametrize(
    "payload", [b"{not json", b"", b'{"from": "+19195551212",', b"\xff\xfe\x00", b"NaN"]
)
def test_malformed_json_is_400_in_the_error_shape(sandbox, api, check_error, payload):
    response = api.post(
        sandbox.messages_url,
        data=payload,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    error = check_error(response, 400, "bad-request", "validation-error")
    assert error["message"].startswith("Bad parameters")


@pytest.mark.parametrize("payload", ['"text"', "42", "null", "true"])
def test_body_must_be_an_object_or_array(sandbox, api, check_error, payload):
    response = api.post(sandbox.messages_url, data=payload, timeout=5)
    check_error(response, 400, "bad-request", "validation-error")


def test_multi_send_is_202_json_in_request_order(sandbox, api, send, body):
    items = [
        body(text="zero"),
        body(to=None),
        body(text="two"),
        body(to=""),
        body(**{"from": "12345"}),
        body(text="five", media=["https://media.example/a.png"]),
    ]
    response = send(items)
    assert response.status_code == 202
    assert response.headers["Content-Type"] == "application/json"
    results = response.json()
    assert [r["result"] for r in results] == [
        "accepted",
        "error",
        "accepted",
        "error",
        "error",
        "accepted",
    ]
    assert results[1]["error"] == {
        "category": "bad-request",
        "code": "missing-property",
        "message": "The 'message' resource property 'to' is required but was not specified",
        "details": [],
    }
    assert results[3]["error"] == {
        "category": "bad-request",
        "code": "blank-property",
        "message": "The 'message' resource property 'to' must contain at least one "
        "non-whitespace character",
        "details": [],
    }
    assert results[4]["error"]["code"] == "validation-error"
    assert results[4]["error"]["message"] == "Invalid phone number"
    pattern = location_re(sandbox)
    for index, text in ((0, "zero"), (2, "two"), (5, "five")):
        assert set(results[index]) == {"result", "location"}
        assert pattern.fullmatch(results[index]["location"])
        assert api.get(results[index]["location"], timeout=5).json()["text"] == text
    assert len(sandbox.store.records()) == 3


def test_multi_send_of_50_is_accepted(sandbox, send, body):
    response = send([body(text=f"n{i}") for i in range(50)])
    assert response.status_code == 202
    assert [r["result"] for r in response.json()] == ["accepted"] * 50


def test_multi_send_over_50_is_403_multi_message_limit(sandbox, send, body, check_error):
    error = check_error(send([body() for _ in range(51)]), 403, "limit", "multi-message-limit")
    assert "51" in error["message"] and "50" in error["message"]
    assert sandbox.store.records() == []


def test_empty_array_is_202_with_no_results(sandbox, send):
    response = send([])
    assert response.status_code == 202
    assert response.json() == []


def test_multi_send_item_that_is_not_an_object(sandbox, send, body):
    results = send([body(), "oops", 5]).json()
    assert [r["result"] for r in results] == ["accepted", "error", "error"]
    assert results[1]["error"]["code"] == "validation-error"


def test_python_sdk_nulls_mean_absent(sandbox, api, send):
    # The v1 python SDK sends every optional key with JSON null.
    response = send(
        {
            "from": "+19195551212",
            "to": "+19195551213",
            "text": "sdk",
            "media": None,
            "receiptRequested": None,
            "callbackUrl": None,
            "callbackHttpMethod": None,
            "callbackTimeout": None,
            "fallbackUrl": None,
            "tag": None,
        }
    )
    assert response.status_code == 201
    got = api.get(response.headers["Location"], timeout=5).json()
    assert got["media"] == []
    assert got["receiptRequested"] == "none"
    assert got["callbackUrl"] is None and got["fallbackUrl"] is None and got["tag"] is None
    assert got["callbackTimeout"] == 10000


@pytest.mark.parametrize(
    "media",
    ["https://media.example/one.png", ["https://media.example/one.png", "http://x.example/2.jpg"]],
    ids=["string", "list"],
)
def test_media_as_string_or_list_makes_an_mms(sandbox, api, send, body, media):
    response = send(body(text=None, media=media))
    assert response.status_code == 201
    got = api.get(response.headers["Location"], timeout=5).json()
    assert got["media"] == (media if isinstance(media, list) else [media])
    assert got["segmentCount"] == 1
    assert got["text"] is None


def test_unknown_route_and_method_answer_in_the_error_shape(sandbox, api, check_error):
    check_error(
        api.get(sandbox.url + "/v2/nothing", timeout=5), 404, "not-found", "resource-not-found"
    )
    not_allowed = api.delete(sandbox.messages_url, timeout=5)
    check_error(not_allowed, 405, "bad-request", "method-not-allowed")
    assert set(not_allowed.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_get_unknown_message_is_404_message_not_found(sandbox, api, check_error):
    response = api.get(sandbox.messages_url + "/m-doesnotexist", timeout=5)
    error = check_error(response, 404, "not-found", "message-not-found")
    assert error["message"] == "The message 'm-doesnotexist' could not be found"
    assert {"name": "messageId", "value": "m-doesnotexist"} in error["details"]


def test_message_ids_are_unique(sandbox, send, body):
    results = send([body() for _ in range(50)]).json()
    ids = {r["location"].rsplit("/", 1)[1] for r in results}
    assert len(ids) == 50
