"""The Catapult v1 client: every outcome class of a send, reads, the wire details."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from app.catapult import (
    AUTH_RETRY_AFTER,
    CatapultClient,
    CatapultError,
    client_for,
    id_from_location,
)
from app.sandbox.server import SandboxServer

BASE = "http://carrier.test"
MESSAGES = f"{BASE}/v1/users/u-1/messages"
NOW = 1_800_000_000.0  # the client's wall clock in these tests (epoch seconds)


class FakeResponse:
    """Just what the client reads from a ``requests.Response``."""

    def __init__(self, status: int, body=None, headers=None, text: str | None = None):
        self.status_code = status
        self.headers = CaseInsensitiveDict(headers or {})
        if text is None:
            text = "" if body is None else json.dumps(body)
            if body is not None:
                self.headers.setdefault("Content-Type", "application/json")
        self.text = text


class FakeSession:
    """Records every request; answers from a script (responses or exceptions, in order)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[dict] = []

    def request(self, method, url, **kwargs):
        self.calls.append({"method": method, "url": url, **kwargs})
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def fake_client(*answers) -> tuple[CatapultClient, FakeSession]:
    session = FakeSession(*answers)
    client = CatapultClient(
        BASE + "/", "u-1", "tok", "sec", session=session, timeout=7.5, wall_clock=lambda: NOW
    )
    return client, session


def msg(n: int = 0, **extra) -> dict:
    return {
        "from": "+15555550100",
        "to": f"+1555555{n:04d}",
        "text": f"hi {n}",
        "callbackUrl": "https://user:p%40ss@relay.example/callbacks/catapult",
        "fallbackUrl": "https://user:p%40ss@fb.relay.example/callbacks/catapult/fallback",
        "tag": f"rm-{n}",
        **extra,
    }


def refused() -> requests.ConnectionError:
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] refused")
    return requests.ConnectionError(MaxRetryError(None, "/v1", reason))


# ---------------------------------------------------------------------- single send


@pytest.mark.parametrize(
    "location",
    [
        f"{MESSAGES}/m-dr4mcch2wfb6frcls677glq",
        "/v1/users/u-1/messages/m-dr4mcch2wfb6frcls677glq",
        "m-dr4mcch2wfb6frcls677glq",
        f"{MESSAGES}/m-dr4mcch2wfb6frcls677glq/",
    ],
)
def test_single_send_takes_id_from_location_absolute_or_relative(location):
    client, session = fake_client(FakeResponse(201, headers={"Location": location}))
    [result] = client.send([msg()])
    assert result.kind == "accepted"
    assert result.carrier_id == "m-dr4mcch2wfb6frcls677glq"
    assert result.error is None
    call = session.calls[0]
    assert call["method"] == "POST" and call["url"] == MESSAGES
    assert isinstance(call["json"], dict)  # one message goes as an object, not an array
    assert call["json"]["callbackUrl"].startswith("https://user:p%40ss@")  # sent as given
    assert result.response["status"] == 201
    assert result.response["headers"]["Location"] == location


def test_single_2xx_without_location_is_accepted_without_id():
    client, _ = fake_client(FakeResponse(201))
    [result] = client.send([msg()])
    assert (result.kind, result.carrier_id) == ("accepted", None)


CARRIER_ID = "m-dr4mcch2wfb6frcls677glq"
# (Content-Type, body) of a 201 to a single send, as each source answered it.
SINGLE_BODIES = {
    "platform": (None, ""),  # empty, no content type (catapult-v1.md 1)
    "old-sandbox": ("application/json", ""),  # empty but labelled JSON
    "json-body": ("application/json", json.dumps({"id": "m-other", "state": "queued"})),
    "text": ("text/plain; charset=utf-8", "Created"),
    "json-array": ("application/json", json.dumps([{"result": "accepted", "location": "m-other"}])),
}


@pytest.mark.parametrize(
    "location",
    [f"{MESSAGES}/{CARRIER_ID}", f"/v1/users/u-1/messages/{CARRIER_ID}"],
    ids=["absolute", "relative"],
)
@pytest.mark.parametrize(
    ("content_type", "text"), list(SINGLE_BODIES.values()), ids=list(SINGLE_BODIES)
)
def test_single_send_201_is_accepted_whatever_its_body(location, content_type, text):
    headers = {"Location": location}
    if content_type is not None:
        headers["Content-Type"] = content_type
    client, _ = fake_client(FakeResponse(201, headers=headers, text=text))
    [result] = client.send([msg()])
    # Location decides, whatever the body says.
    assert (result.kind, result.carrier_id, result.error) == ("accepted", CARRIER_ID, None)
    assert result.response["body"] == text


@pytest.mark.parametrize("key", ["id", "messageId"])
def test_single_send_201_with_a_json_body_and_no_location_takes_the_id_from_the_body(key):
    client, _ = fake_client(FakeResponse(201, {key: CARRIER_ID}))
    [result] = client.send([msg()])
    assert (result.kind, result.carrier_id) == ("accepted", CARRIER_ID)


def test_stored_request_has_no_credentials():
    client, session = fake_client(FakeResponse(201, headers={"Location": f"{MESSAGES}/m-1"}))
    [result] = client.send([msg()])
    assert result.request["callbackUrl"] == "https://***:***@relay.example/callbacks/catapult"
    assert result.request["fallbackUrl"].startswith("https://***:***@fb.relay.example/")
    dumped = json.dumps([result.request, result.response])
    for secret in ("p%40ss", "tok", "sec"):
        assert secret not in dumped
    # The caller's dict is not modified: the carrier got the real URL.
    assert session.calls[0]["json"]["callbackUrl"].startswith("https://user:")


def test_auth_and_timeout_on_every_call():
    client, session = fake_client(
        FakeResponse(201, headers={"Location": f"{MESSAGES}/m-1"}),
        FakeResponse(200, {"id": "m-1", "state": "sent"}),
        FakeResponse(200, []),
    )
    client.send([msg()])
    client.get_message("m-1")
    list(client.list_messages())
    assert len(session.calls) == 3
    for call in session.calls:
        assert call["timeout"] == 7.5
        assert call["auth"] == ("tok", "sec")


# ---------------------------------------------------------------------- multi send


def test_batch_202_maps_each_item_in_request_order():
    items = [
        {"result": "accepted", "location": f"{MESSAGES}/m-aaaaaaaaaaaaaaaaaaaaaaa"},
        {
            "result": "error",
            "error": {
                "category": "bad-request",
                "code": "blank-property",
                "message": "The 'message' resource property 'to' must "
                "contain at least one non-whitespace character",
                "details": [],
            },
        },
        {"result": "error", "error": {"category": "limit", "code": "message-rate-limit"}},
        {"result": "accepted", "location": "/v1/users/u-1/messages/m-bbbbbbbbbbbbbbbbbbbbbbb"},
        {
            "result": "error",
            "error": {"category": "unavailable", "code": "message-gateway-unavailable"},
        },
    ]
    client, session = fake_client(FakeResponse(202, items))
    results = client.send([msg(i) for i in range(5)])
    assert isinstance(session.calls[0]["json"], list) and len(session.calls[0]["json"]) == 5
    assert [r.kind for r in results] == ["accepted", "rejected", "retry", "accepted", "unknown"]
    assert results[0].carrier_id == "m-aaaaaaaaaaaaaaaaaaaaaaa"
    assert results[3].carrier_id == "m-bbbbbbbbbbbbbbbbbbbbbbb"
    assert results[1].error["code"] == "blank-property"
    assert results[1].error["message"].startswith("The 'message' resource property 'to'")
    assert results[2].error["message"]  # filled in: the carrier item had none
    assert [r.request["tag"] for r in results] == [f"rm-{i}" for i in range(5)]
    assert results[1].response == {
        "status": 202,
        "headers": {"Content-Type": "application/json"},
        "body": items[1],
    }


def test_batch_item_error_spelled_failed_is_understood():
    items = [
        {"result": "error", "failed": {"category": "bad-request", "code": "x", "message": "no"}},
        {"result": "accepted"},
    ]
    client, _ = fake_client(FakeResponse(202, items))
    results = client.send([msg(0), msg(1)])
    assert [r.kind for r in results] == ["rejected", "accepted"]
    assert results[0].error["code"] == "x"


@pytest.mark.parametrize(
    "answer",
    [
        FakeResponse(202, text="not json", headers={"Content-Type": "application/json"}),
        FakeResponse(202, {"ok": True}),
        FakeResponse(202, [{"result": "accepted", "location": f"{MESSAGES}/m-1"}]),  # one of two
    ],
)
def test_batch_2xx_without_usable_items_is_unknown_never_retried(answer):
    client, _ = fake_client(answer)
    results = client.send([msg(0), msg(1)])
    assert results[-1].kind == "unknown"
    assert all(r.kind in ("unknown", "accepted") for r in results)
    assert results[-1].error["code"] == "invalid-response"


def test_whole_request_error_applies_to_every_message():
    body = {
        "category": "limit",
        "code": "message-rate-limit",
        "message": "You can send 1 messages per 1 seconds, calculated as the average over "
        "10 seconds. Your rate is: 1.1",
    }
    client, _ = fake_client(FakeResponse(403, body))
    results = client.send([msg(i) for i in range(3)])
    assert [r.kind for r in results] == ["retry"] * 3
    assert [r.request["tag"] for r in results] == ["rm-0", "rm-1", "rm-2"]
    assert all(
        r.error == {"category": "limit", "code": "message-rate-limit", "message": body["message"]}
        for r in results
    )


def test_more_than_50_is_refused_before_sending():
    client, session = fake_client()
    with pytest.raises(ValueError):
        client.send([msg(i) for i in range(51)])
    assert session.calls == []
    assert client.send([]) == []


# ---------------------------------------------------------------------- error matrix


def err(category, code, message="carrier says no"):
    body = {"category": category, "code": code, "details": []}
    if message is not None:
        body["message"] = message
    return body


@pytest.mark.parametrize(
    "status,body,text,headers,kind,code,retry_after",
    [
        # Over-limit sends are 403, not 429 (catapult-v1.md "Rate limits"), in three spellings.
        (403, err("limit", "message-rate-limit"), None, {}, "retry", "message-rate-limit", None),
        (
            403,
            err("limit", "message-rate-limit-overall"),
            None,
            {},
            "retry",
            "message-rate-limit-overall",
            None,
        ),
        (
            403,
            err("limit", "message-rate-limit-per-tn"),
            None,
            {},
            "retry",
            "message-rate-limit-per-tn",
            None,
        ),
        # 429: the documented body has no message; X-RateLimit-Reset is epoch milliseconds.
        (
            429,
            {"category": "too-many-requests", "code": "rate-limit-reached"},
            None,
            {"X-RateLimit-Reset": str(int((NOW + 7.5) * 1000))},
            "retry",
            "rate-limit-reached",
            7.5,
        ),
        (
            429,
            {"category": "too-many-requests", "code": "rate-limit-reached"},
            None,
            {"X-RateLimit-Reset": str(int((NOW - 3) * 1000))},
            "retry",
            "rate-limit-reached",
            0.0,
        ),
        (429, None, "", {"Retry-After": "4"}, "retry", "http-429", 4.0),
        (429, None, "", {}, "retry", "http-429", None),
        # Account queue full: nothing was sent.
        (
            400,
            err("bad-request", "message-delay-limit"),
            None,
            {},
            "retry",
            "message-delay-limit",
            None,
        ),
        # Our credentials are wrong: retried after a long pause (a config error must not lose mail).
        (
            401,
            err("authentication", "user-access-denied"),
            None,
            {},
            "retry",
            "user-access-denied",
            AUTH_RETRY_AFTER,
        ),
        (
            401,
            None,
            "Unauthorized",
            {"Content-Type": "text/plain"},
            "retry",
            "http-401",
            AUTH_RETRY_AFTER,
        ),
        # ...but a 401 about the message's own ``from`` number is final.
        (
            401,
            err("authentication", "number-access-denied"),
            None,
            {},
            "rejected",
            "number-access-denied",
            None,
        ),
        (
            401,
            err("authentication", "no-allocated-number"),
            None,
            {},
            "rejected",
            "no-allocated-number",
            None,
        ),
        (
            400,
            err("bad-request", "validation-error", "Invalid phone number"),
            None,
            {},
            "rejected",
            "validation-error",
            None,
        ),
        (
            400,
            err("bad-request", "callback-invalid-url"),
            None,
            {},
            "rejected",
            "callback-invalid-url",
            None,
        ),
        (
            403,
            err("credit", "insufficient-available-balance"),
            None,
            {},
            "rejected",
            "insufficient-available-balance",
            None,
        ),
        (
            403,
            err("limit", "multi-message-limit"),
            None,
            {},
            "rejected",
            "multi-message-limit",
            None,
        ),
        (
            403,
            err("bad-request", "media-size-overflow", None),
            None,
            {},
            "rejected",
            "media-size-overflow",
            None,
        ),
        (
            404,
            err("not-found", "resource-not-found"),
            None,
            {},
            "rejected",
            "resource-not-found",
            None,
        ),
        (
            409,
            err("conflict", "duplicate-message"),
            None,
            {},
            "rejected",
            "duplicate-message",
            None,
        ),
        # Bodies that are not the documented JSON.
        (
            400,
            None,
            "Bad Request: to is invalid",
            {"Content-Type": "text/plain"},
            "rejected",
            "http-400",
            None,
        ),
        (
            400,
            None,
            '{"category": "bad-req',
            {"Content-Type": "application/json"},
            "rejected",
            "http-400",
            None,
        ),
        (400, None, "", {}, "rejected", "http-400", None),
        (400, None, "[1, 2]", {"Content-Type": "application/json"}, "rejected", "http-400", None),
        # 5xx: the message may or may not have gone (catapult-v1.md §1): never resent.
        (
            503,
            err("unavailable", "message-gateway-unavailable"),
            None,
            {},
            "unknown",
            "message-gateway-unavailable",
            None,
        ),
        (
            503,
            err("unavailable", "message-delivery-failed", None),
            None,
            {},
            "unknown",
            "message-delivery-failed",
            None,
        ),
        (500, err("unavailable", "internal-error"), None, {}, "unknown", "internal-error", None),
        (
            502,
            None,
            "<html>Bad Gateway</html>",
            {"Content-Type": "text/html"},
            "unknown",
            "http-502",
            None,
        ),
        (302, None, "", {"Location": "/elsewhere"}, "unknown", "http-302", None),
    ],
)
def test_error_outcome_matrix(status, body, text, headers, kind, code, retry_after):
    client, _ = fake_client(FakeResponse(status, body, headers, text))
    [result] = client.send([msg()])
    assert result.kind == kind
    assert result.carrier_id is None
    assert result.error["code"] == code
    assert result.error["category"]
    assert isinstance(result.error["message"], str) and result.error["message"]
    if retry_after is None:
        assert result.retry_after is None
    else:
        assert result.retry_after == pytest.approx(retry_after, abs=0.01)
    assert result.response["status"] == status


def test_error_message_keeps_carrier_text_and_plain_text_body():
    client, _ = fake_client(
        FakeResponse(400, None, {"Content-Type": "text/plain"}, "Bad Request: to is invalid")
    )
    [result] = client.send([msg()])
    assert result.error == {
        "category": "bad-request",
        "code": "http-400",
        "message": "Bad Request: to is invalid",
    }
    assert result.response["body"] == "Bad Request: to is invalid"


# ---------------------------------------------------------------------- transport


@pytest.mark.parametrize(
    "exc,kind,code",
    [
        (refused(), "retry", "connection-refused"),
        (requests.exceptions.ConnectTimeout("connect timed out"), "retry", "connect-timeout"),
        (requests.exceptions.ReadTimeout("read timed out"), "unknown", "read-timeout"),
        (
            requests.ConnectionError(
                ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed"))
            ),
            "unknown",
            "connection-lost",
        ),
        (requests.exceptions.ChunkedEncodingError("broken"), "unknown", "transport-error"),
    ],
)
def test_transport_errors(exc, kind, code):
    client, _ = fake_client(exc)
    results = client.send([msg(0), msg(1)])
    assert [r.kind for r in results] == [kind, kind]
    assert results[0].error["code"] == code
    assert results[0].response is None


def test_real_connection_refused_is_retry():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = CatapultClient(f"http://127.0.0.1:{port}", "u-1", "tok", "sec", timeout=2)
    [result] = client.send([msg()])
    assert (result.kind, result.error["code"]) == ("retry", "connection-refused")


def test_real_read_timeout_is_unknown():
    with socket.socket() as server:  # accepts the connection, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = CatapultClient(f"http://127.0.0.1:{port}", "u-1", "tok", "sec", timeout=0.3)
        [result] = client.send([msg()])
    assert (result.kind, result.error["code"]) == ("unknown", "read-timeout")


def test_real_http_exchange_sends_basic_auth_and_json():
    seen: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen["auth"] = self.headers["Authorization"]
            seen["type"] = self.headers["Content-Type"]
            seen["path"] = self.path
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(201)
            self.send_header("Location", f"http://127.0.0.1/v1/users/u-1/messages/m-{'a' * 23}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with requests.Session() as session:
            client = CatapultClient(
                f"http://127.0.0.1:{server.server_port}",
                "u-1",
                "tok",
                "s:ec",
                session=session,
                timeout=5,
            )
            [result] = client.send([msg()])
    finally:
        server.shutdown()
        server.server_close()
    assert result.kind == "accepted" and result.carrier_id == "m-" + "a" * 23
    assert seen["auth"] == "Basic " + base64.b64encode(b"tok:s:ec").decode()
    assert seen["type"] == "application/json"
    assert seen["path"] == "/v1/users/u-1/messages"
    assert seen["body"]["tag"] == "rm-0"


# ---------------------------------------------------------------------- reads


def test_get_message():
    resource = {"id": "m-1", "messageId": "m-1", "state": "sent", "deliveryState": "delivered"}
    client, session = fake_client(FakeResponse(200, resource))
    assert client.get_message("m-1") == resource
    assert session.calls[0]["method"] == "GET"
    assert session.calls[0]["url"] == f"{MESSAGES}/m-1"


@pytest.mark.parametrize(
    "answer,status,code",
    [
        (
            FakeResponse(
                404,
                {
                    "category": "not-found",
                    "code": "message-not-found",
                    "message": "The message 'm-1' could not be found",
                },
            ),
            404,
            "message-not-found",
        ),
        (
            FakeResponse(429, {"category": "too-many-requests", "code": "rate-limit-reached"}),
            429,
            "rate-limit-reached",
        ),
        (FakeResponse(500, text="oops"), 500, "http-500"),
        (FakeResponse(200, text="{not json"), 200, "invalid-response"),
        (FakeResponse(200, ["a list"]), 200, "invalid-response"),
        (requests.exceptions.ReadTimeout("slow"), None, "transport-error"),
        (refused(), None, "transport-error"),
    ],
)
def test_get_message_errors_are_one_type(answer, status, code):
    client, _ = fake_client(answer)
    with pytest.raises(CatapultError) as info:
        client.get_message("m-1")
    assert info.value.status == status
    assert info.value.code == code
    assert info.value.category
    assert info.value.message
    assert info.value.as_dict()["code"] == code


def test_list_messages_follows_next_link_verbatim():
    next_url = f"{MESSAGES}?sortKeyLT=abc&size=2"
    client, session = fake_client(
        FakeResponse(200, [{"id": "m-1"}, {"id": "m-2"}], {"Link": f'<{next_url}>; rel="next"'}),
        FakeResponse(200, [{"id": "m-3"}]),
    )
    ids = [m["id"] for m in client.list_messages(size=2, direction="out")]
    assert ids == ["m-1", "m-2", "m-3"]
    assert session.calls[0]["params"] == {"size": 2, "direction": "out"}
    assert session.calls[1]["url"] == next_url and session.calls[1]["params"] is None


def test_id_from_location_edge_cases():
    assert id_from_location(None) is None
    assert id_from_location("") is None
    assert id_from_location(" /v1/users/u/messages/m-x?y=1 ") == "m-x"


def test_client_for_app_is_built_from_settings_once_and_can_be_faked(app):
    client = client_for(app)
    assert isinstance(client, CatapultClient)
    assert client.messages_url == "http://carrier.test/v1/users/u-test/messages"
    assert client.timeout == app.config["CARRIER_TIMEOUT_S"]
    assert client_for(app) is client
    fake = object()
    app.extensions["catapult_client"] = fake
    assert client_for(app) is fake


# ---------------------------------------------------------------------- against the sandbox


@pytest.fixture
def sandbox_client():
    """``make(**options)``: a sandbox on loopback and a client of it; all stopped after."""
    started = []

    def make(**options):
        sandbox = SandboxServer(scenario="perfect", seed=5, **options).start()
        session = requests.Session()
        session.trust_env = False
        started.append((sandbox, session))
        client = CatapultClient(
            sandbox.url, sandbox.user_id, sandbox.token, sandbox.secret, session=session, timeout=5
        )
        return sandbox, client

    yield make
    for sandbox, session in started:
        session.close()
        sandbox.stop()


def quiet(n: int, **extra) -> dict:
    """A message without callback URLs (null: absent), so the sandbox calls nobody."""
    return msg(n, callbackUrl=None, fallbackUrl=None, **extra)


def test_sandbox_single_send_read_and_list(sandbox_client):
    sandbox, client = sandbox_client()
    [one] = client.send([quiet(0)])
    assert one.kind == "accepted", one.error
    assert one.response["headers"]["Location"] == f"{sandbox.messages_url}/{one.carrier_id}"
    assert "Content-Type" not in one.response["headers"] and one.response["body"] == ""
    assert sandbox.store.get(one.carrier_id).tag == "rm-0"
    got = client.get_message(one.carrier_id)
    assert (got["id"], got["tag"], got["text"]) == (one.carrier_id, "rm-0", "hi 0")
    batch = client.send([quiet(1), quiet(2, to=""), quiet(3)])
    assert [r.kind for r in batch] == ["accepted", "rejected", "accepted"]
    assert batch[1].error["code"] == "blank-property"
    listed = [m["id"] for m in client.list_messages(size=2)]  # two pages via Link rel="next"
    assert sorted(listed) == sorted([one.carrier_id, batch[0].carrier_id, batch[2].carrier_id])


def test_sandbox_read_errors_are_catapult_errors(sandbox_client):
    _, client = sandbox_client(reads_per_second=1)
    with pytest.raises(CatapultError) as missing:
        client.get_message("m-aaaaaaaaaaaaaaaaaaaaaaa")
    assert (missing.value.status, missing.value.code) == (404, "message-not-found")
    with pytest.raises(CatapultError) as limited:
        client.get_message("m-aaaaaaaaaaaaaaaaaaaaaaa")
    assert limited.value.status == 429
    assert (limited.value.category, limited.value.code) == (
        "too-many-requests",
        "rate-limit-reached",
    )
    assert limited.value.message  # filled in: the platform's 429 body has no message
