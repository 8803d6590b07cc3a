"""Send rate limits: 403 message-rate-limit, per account and per number (catapult-v1.md 1)."""

from __future__ import annotations

import time

import pytest

from app.sandbox.errors import CatapultError
from app.sandbox.ratelimit import RateLimiter, ReadLimiter

SAMPLE = (
    "You can send 1 messages per 1 seconds, calculated as the average over 10 seconds. "
    "Your rate is: 1.1"
)


def test_eleventh_send_in_ten_seconds_at_1_mps_is_403(make_sandbox, http, body, check_error):
    sandbox = make_sandbox(mps=1)
    http.auth = sandbox.auth
    for _ in range(10):
        assert http.post(sandbox.messages_url, json=body(), timeout=5).status_code == 201
    response = http.post(sandbox.messages_url, json=body(), timeout=5)
    error = check_error(response, 403, "limit", "message-rate-limit")
    assert error["message"] == SAMPLE
    assert len(sandbox.store.records()) == 10


def test_per_number_limit(make_sandbox, http, body, check_error):
    sandbox = make_sandbox(mps=100, mps_per_number=0.5)
    http.auth = sandbox.auth
    for _ in range(5):
        ok = http.post(sandbox.messages_url, json=body(**{"from": "+15550000001"}), timeout=5)
        assert ok.status_code == 201
    over = http.post(sandbox.messages_url, json=body(**{"from": "+15550000001"}), timeout=5)
    error = check_error(over, 403, "limit", "message-rate-limit")
    assert error["message"] == (
        "You can send 0.5 messages per 1 seconds, calculated as the average over 10 seconds. "
        "Your rate is: 0.6"
    )
    other = http.post(sandbox.messages_url, json=body(**{"from": "+15550000002"}), timeout=5)
    assert other.status_code == 201


def test_multi_send_items_over_the_limit_fail_one_by_one(make_sandbox, http, body):
    sandbox = make_sandbox(mps=1)
    response = http.post(
        sandbox.messages_url, json=[body() for _ in range(12)], auth=sandbox.auth, timeout=5
    )
    assert response.status_code == 202
    results = response.json()
    assert [r["result"] for r in results] == ["accepted"] * 10 + ["error"] * 2
    assert results[10]["error"]["code"] == "message-rate-limit"
    assert results[10]["error"]["category"] == "limit"
    assert results[10]["error"]["message"] == SAMPLE


def test_mps_0_means_no_limit(sandbox, send, body):
    for _ in range(3):
        results = send([body() for _ in range(50)]).json()
        assert all(r["result"] == "accepted" for r in results)


def test_window_slides_over_10_seconds():
    now = [1000.0]
    limiter = RateLimiter(mps=1, clock=lambda: now[0])
    for _ in range(10):
        limiter.take("+1")
        now[0] += 0.1
    with pytest.raises(CatapultError) as caught:
        limiter.take("+1")
    assert caught.value.status == 403 and caught.value.message.endswith("Your rate is: 1.1")
    now[0] = 1010.05  # the first send left the window
    limiter.take("+1")
    with pytest.raises(CatapultError):
        limiter.take("+1")


def test_rejected_sends_are_not_counted():
    now = [0.0]
    limiter = RateLimiter(mps=0.2, clock=lambda: now[0])
    limiter.take("+1")
    limiter.take("+1")
    for _ in range(5):
        with pytest.raises(CatapultError):
            limiter.take("+1")
    now[0] = 10.5
    limiter.take("+1")


def test_reads_over_the_limit_are_429_without_message_and_reset_in_ms(make_sandbox, http, body):
    sandbox = make_sandbox(reads_per_second=2)
    http.auth = sandbox.auth
    location = http.post(sandbox.messages_url, json=body(), timeout=5).headers["Location"]
    assert http.get(location, timeout=5).status_code == 200
    assert http.get(sandbox.messages_url, timeout=5).status_code == 200
    before_ms = time.time() * 1000
    over = http.get(location, timeout=5)
    assert over.status_code == 429
    assert over.headers["Content-Type"] == "application/json"
    error = over.json()
    # The documented 429 body has no message key (catapult-v1.md 1).
    assert set(error) == {"category", "code", "details"}
    assert (error["category"], error["code"]) == ("too-many-requests", "rate-limit-reached")
    assert {d["name"] for d in error["details"]} >= {"requestMethod", "requestPath"}
    reset = int(over.headers["X-RateLimit-Reset"])  # epoch milliseconds, not seconds
    assert before_ms - 50 <= reset <= before_ms + 1050
    assert http.get(sandbox.messages_url, timeout=5).status_code == 429
    # Sends are not reads: they are limited by mps alone (403, never 429).
    assert http.post(sandbox.messages_url, json=body(), timeout=5).status_code == 201


def test_read_window_slides_over_one_second():
    now = [100.0]
    limiter = ReadLimiter(3, clock=lambda: now[0], wall_clock=lambda: 1_700_000_000 + now[0])
    for step in (0.0, 0.2, 0.4):
        now[0] = 100.0 + step
        limiter.take()
    now[0] = 100.5
    with pytest.raises(CatapultError) as caught:
        limiter.take()
    assert caught.value.status == 429 and caught.value.message is None
    # The oldest read (at 100.0) leaves the window at 101.0: that moment, in epoch ms.
    assert caught.value.headers["X-RateLimit-Reset"] == str((1_700_000_000 + 101) * 1000)
    now[0] = 101.0
    limiter.take()  # refused reads were not counted
    with pytest.raises(CatapultError):
        limiter.take()


def test_reads_per_second_0_means_no_limit(sandbox, api):
    for _ in range(30):
        assert api.get(sandbox.messages_url, timeout=5).status_code == 200
