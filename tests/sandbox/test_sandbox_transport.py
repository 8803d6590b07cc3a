"""Callback URL handling: credentials out of the URL, redaction, query encoding."""

from __future__ import annotations

import base64

import pytest

from app.sandbox.transport import encode_query, redact, split_credentials, with_query


@pytest.mark.parametrize(
    ("url", "clean", "credentials"),
    [
        ("https://relay.example/cb", "https://relay.example/cb", None),
        ("https://u:p@relay.example/cb?x=1", "https://relay.example/cb?x=1", b"u:p"),
        ("http://u%40x:p%3Aw@127.0.0.1:8080/cb", "http://127.0.0.1:8080/cb", b"u@x:p:w"),
        ("http://user@relay.example/cb", "http://relay.example/cb", b"user:"),
        ("http://a:b@[::1]:9/cb", "http://[::1]:9/cb", b"a:b"),
    ],
)
def test_split_credentials(url, clean, credentials):
    target, header = split_credentials(url)
    assert target == clean
    assert "@" not in target
    if credentials is None:
        assert header is None
    else:
        assert header == "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:secret@relay.example/cb", "https://u:***@relay.example/cb"),
        ("https://token@relay.example/cb", "https://***@relay.example/cb"),
        ("https://relay.example/cb", "https://relay.example/cb"),
        (None, None),
    ],
)
def test_redact(url, expected):
    assert redact(url) == expected


def test_encode_query_percent_encodes_and_brackets_media():
    query = encode_query(
        {
            "from": "+19195551212",
            "text": "a b&c=d/é",
            "media": ["https://m.example/1.png", "https://m.example/2.png"],
            "deliveryCode": 0,
            "tag": None,
            "extra": {"k": [1]},
        }
    )
    assert query == (
        "from=%2B19195551212&text=a%20b%26c%3Dd%2F%C3%A9"
        "&media=%5Bhttps%3A%2F%2Fm.example%2F1.png%2C%20https%3A%2F%2Fm.example%2F2.png%5D"
        "&deliveryCode=0&extra=%7B%22k%22%3A%5B1%5D%7D"
    )


def test_with_query_keeps_the_urls_own_query():
    assert with_query("http://h/cb", "a=1") == "http://h/cb?a=1"
    assert with_query("http://h/cb?x=2#frag", "a=1") == "http://h/cb?x=2&a=1"
