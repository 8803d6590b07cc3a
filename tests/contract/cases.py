"""What the contract tests of every client share: numbers, bad sends, result helpers."""

from __future__ import annotations

import re
from typing import Any

INSTALL_TIMEOUT = 300  # seconds for one registry install on a fresh machine
RUN_TIMEOUT = 60  # seconds for one client process
# A contract test may pay for an install in its set-up, which pytest-timeout counts.
TEST_TIMEOUT = INSTALL_TIMEOUT + 2 * RUN_TIMEOUT

FROM = "+19195551212"
OTHER_FROM = "+19195551299"
TO = "+19195551213"
MESSAGE_ID = re.compile(r"m-[a-z2-7]{23}")
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")

# (id, fields replaced in a valid SMS, code, the platform's message) for sends refused with 400;
# None is sent as JSON null, which the platform takes as absent (catapult-v1.md 1).
BAD_SENDS = [
    (
        "missing-to",
        {"to": None},
        "missing-property",
        "The 'message' resource property 'to' is required but was not specified",
    ),
    (
        "blank-text",
        {"text": "   "},
        "blank-property",
        "The 'message' resource property 'text' must contain at least one non-whitespace character",
    ),
    ("bad-from", {"from": "12345"}, "validation-error", "Invalid phone number"),
    (
        "long-text",
        {"text": "x" * 2049},
        "validation-error",
        "The 'message' resource property 'text' exceeds the limit of 2048",
    ),
    (
        "callback-timeout",
        {"callbackTimeout": 20000},
        "validation-error",
        "The 'message' resource property 'callbackTimeout' exceeds the limit of 10000",
    ),
    (
        "receipt",
        {"receiptRequested": "sometimes"},
        "validation-error",
        "The 'message' resource property 'receiptRequested' must be one of the following "
        "values: none, all, error",
    ),
    (
        "callback-url",
        {"callbackUrl": "ftp://relay.example/cb"},
        "callback-invalid-url",
        "The URL ftp://relay.example/cb is not a valid callbackUrl/fallbackUrl",
    ),
]
BAD_SEND_IDS = [case[0] for case in BAD_SENDS]
MULTI_LIMIT_MESSAGE = (
    "The number of messages [51] in the multi message request is greater than the limit [50]."
)
RATE_LIMIT_MESSAGE = (
    "You can send 0.1 messages per 1 seconds, calculated as the average over 10 seconds. "
    "Your rate is: 0.2"
)
BAD_CREDENTIALS_MESSAGE = "The API token or secret is not valid"


def sms(**fields: Any) -> dict[str, Any]:
    """A valid SMS with ``fields`` replaced."""
    return {"from": FROM, "to": TO, "text": "hello", **fields}


def ok(result: dict) -> Any:
    """The value of a step that must have succeeded."""
    assert result["ok"], f"the client raised: {result['error']}"
    return result["value"]


def failed(result: dict) -> dict:
    """The error of a step that must have failed."""
    assert not result["ok"], f"the client returned: {result['value']}"
    return result["error"]
