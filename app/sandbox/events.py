"""Callback event payloads (catapult-v1.md section 3) and the deliveryCode table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import StoredMessage

APPLICATION_ID = "a-sandboxapplication00000"

# deliveryCode -> deliveryDescription, as listed in the v1 SMS event reference.
DELIVERY_CODES: dict[int, str] = {
    0: "Message delivered to carrier",
    100: "Message not delivered to carrier",
    187: "Statistical spam detected",
    188: "Keyword spam detected",
    189: "Spam detected",
    482: "Loop detected",
    600: "Destination carrier could not accept messages",
    610: "Message submission failed",
    620: "Destination application error",
    630: "Message not acknowledged",
    650: "Destination Failure",
    700: "Invalid service type",
    720: "Invalid destination number",
    740: "Invalid source number",
    750: "Destination Rejected Message",
    751: "Destination Rejected Message too large",
    770: "Destination Rejected due to SPAM",
    775: "Rejected due to user opt out",
    902: "Message Expired",
    999: "Unknown error",
}
# Only code 0 means delivered; every other code of the table is a not-delivered receipt.
NOT_DELIVERED_CODES = tuple(code for code in DELIVERY_CODES if code != 0)
# Codes that go with a failed send (state "error") rather than a failed hand-off.
ERROR_CODES = (100, 610, 620, 650, 720, 740, 999)


def iso_time(moment: datetime) -> str:
    """UTC ISO-8601 with milliseconds and ``Z`` (``2012-11-14T16:13:06.076Z``)."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def status_truth(
    state: str, delivery_state: str | None = None, delivery_code: int | None = None
) -> dict[str, Any]:
    """The message fields one event sets: state and, for receipts, the delivery fields."""
    truth: dict[str, Any] = {"state": state}
    if delivery_state is not None:
        truth["deliveryState"] = delivery_state
    if delivery_code is not None:
        truth["deliveryCode"] = delivery_code
        truth["deliveryDescription"] = DELIVERY_CODES[delivery_code]
    return truth


def message_payload(message: StoredMessage, message_uri: str, truth: dict[str, Any]) -> dict:
    """One event's fields; absent fields are omitted (the documented outbound example)."""
    payload: dict[str, Any] = {
        "eventType": "mms" if message.media else "sms",
        "direction": message.direction,
        "messageId": message.id,
        "messageUri": message_uri,
        "from": message.from_,
        "to": message.to,
    }
    if message.text is not None:
        payload["text"] = message.text
    if message.direction == "in":
        payload["applicationId"] = APPLICATION_ID
    payload["time"] = iso_time(message.time)
    payload.update(truth)
    payload["segmentCount"] = message.segment_count
    if message.tag is not None:
        payload["tag"] = message.tag
    if message.media:
        payload["media"] = list(message.media)
    return payload


def garble(payload: dict[str, Any], description: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Hostile variant: odd unicode description, deliveryCode as a string, unknown fields."""
    noisy = dict(payload)
    if "deliveryDescription" in noisy:
        noisy["deliveryDescription"] = description
    if "deliveryCode" in noisy:
        noisy["deliveryCode"] = str(noisy["deliveryCode"])  # "number or numeric string"
    noisy.update(extra)
    return noisy
