"""The sandbox's in-memory, thread-safe message store and callback attempt log."""

from __future__ import annotations

import base64
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .events import iso_time


def new_message_id() -> str:
    """``m-`` + 23 characters of ``[a-z2-7]``, the shape of real v1 ids."""
    return "m-" + base64.b32encode(os.urandom(15)).decode("ascii").lower()[:23]


@dataclass
class StoredMessage:
    """A message resource; the truth fields change only through ``MessageStore.apply``."""

    id: str
    user_id: str
    direction: str
    from_: str
    to: str
    text: str | None
    media: tuple[str, ...]
    time: datetime
    segment_count: int
    receipt_requested: str | None = None
    callback_url: str | None = None
    callback_http_method: str | None = None
    callback_timeout: int | None = None
    fallback_url: str | None = None
    tag: str | None = None
    state: str = "queued"
    delivery_state: str | None = None
    delivery_code: int | None = None
    delivery_description: str | None = None
    parent_id: str | None = None
    ordinal: int = 0
    sort_key: int = 0
    applied_seq: int = 0
    events_planned: int = 0
    events_generated: int = 0
    plan: dict[str, Any] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        """The ``GET /v1/users/{userId}/messages/{id}`` body."""
        return {
            "id": self.id,
            "messageId": self.id,
            "from": self.from_,
            "to": self.to,
            "direction": self.direction,
            "text": self.text,
            "media": list(self.media),
            "state": self.state,
            "time": iso_time(self.time),
            "callbackUrl": self.callback_url,
            "callbackTimeout": self.callback_timeout,
            "fallbackUrl": self.fallback_url,
            "tag": self.tag,
            "receiptRequested": self.receipt_requested,
            "deliveryState": self.delivery_state,
            # The platform was seen answering deliveryCode as a numeric string ("0") here.
            "deliveryCode": None if self.delivery_code is None else str(self.delivery_code),
            "deliveryDescription": self.delivery_description,
            "segmentCount": self.segment_count,
        }

    def record(self) -> dict[str, Any]:
        """Introspection view: the resource with the code as a number, plus the plan."""
        return {
            **self.resource(),
            "deliveryCode": self.delivery_code,
            "userId": self.user_id,
            "callbackHttpMethod": self.callback_http_method,
            "parentMessageId": self.parent_id,
            "ordinal": self.ordinal,
            "sortKey": self.sort_key,
            "appliedSeq": self.applied_seq,
            "eventsPlanned": self.events_planned,
            "eventsGenerated": self.events_generated,
            "settled": self.events_generated >= self.events_planned,
            "plan": self.plan,
        }


class MessageStore:
    """Messages in creation order, guarded by one lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._messages: dict[str, StoredMessage] = {}
        self._order: list[StoredMessage] = []  # ascending sort_key
        self._ordinal = 0
        self._last_key = 0

    def next_ordinal(self) -> int:
        """The next outbound message's ordinal (seeds its scenario decisions)."""
        with self._lock:
            self._ordinal += 1
            return self._ordinal

    def add(self, message: StoredMessage) -> StoredMessage:
        """Store a new message with a unique, time-ordered sort key (used by ``sortKeyLT``)."""
        with self._lock:
            now = datetime.now(UTC)
            # Millisecond precision, like the resource's time: date filters compare exactly.
            message.time = now.replace(microsecond=now.microsecond // 1000 * 1000)
            millis = int(message.time.timestamp() * 1000)
            self._last_key = max(millis * 1_000_000, self._last_key + 1)
            message.sort_key = self._last_key
            self._messages[message.id] = message
            self._order.append(message)
            return message

    def get(self, message_id: str) -> StoredMessage | None:
        """The message, or None."""
        with self._lock:
            return self._messages.get(message_id)

    def read(self, message_id: str, view: Callable[[StoredMessage], dict]) -> dict | None:
        """A consistent rendering of one message under the lock."""
        with self._lock:
            message = self._messages.get(message_id)
            return None if message is None else view(message)

    def apply(self, message_id: str, seq: int, truth: dict[str, Any]) -> None:
        """Record that an event was generated; the highest logical ``seq`` decides the truth."""
        with self._lock:
            message = self._messages.get(message_id)
            if message is None:
                return
            message.events_generated += 1
            if seq <= message.applied_seq:
                return  # a duplicate or an overtaken event: the truth stays with the later one
            message.applied_seq = seq
            message.state = truth["state"]
            message.delivery_state = truth.get("deliveryState", message.delivery_state)
            message.delivery_code = truth.get("deliveryCode", message.delivery_code)
            message.delivery_description = truth.get(
                "deliveryDescription", message.delivery_description
            )

    def note_generated(self, message_id: str) -> None:
        """Count an event that changes no truth (an inbound reply sent on the message's behalf)."""
        with self._lock:
            message = self._messages.get(message_id)
            if message is not None:
                message.events_generated += 1

    def records(self, direction: str | None = None) -> list[dict[str, Any]]:
        """Every message's introspection record, oldest first."""
        with self._lock:
            return [m.record() for m in self._order if direction in (None, m.direction)]

    def sorted_page(
        self, match: Callable[[StoredMessage], bool], *, sort_key_lt: int | None, size: int
    ) -> tuple[list[tuple[int, dict[str, Any]]], int | None]:
        """Newest ``size`` matches below ``sort_key_lt`` with sort keys; the next key if more."""
        found: list[StoredMessage] = []
        more = False
        with self._lock:
            for message in reversed(self._order):
                if sort_key_lt is not None and message.sort_key >= sort_key_lt:
                    continue
                if not match(message):
                    continue
                if len(found) == size:
                    more = True
                    break
                found.append(message)
            items = [(m.sort_key, m.resource()) for m in found]
        return items, (found[-1].sort_key if more else None)

    def reset(self) -> None:
        """Forget every message; ordinals restart so seeded decisions repeat."""
        with self._lock:
            self._messages.clear()
            self._order.clear()
            self._ordinal = 0


class CallbackLog:
    """Callback attempts in the order they finished; the oldest go beyond ``limit``."""

    def __init__(self, limit: int = 200_000) -> None:
        self._lock = threading.Lock()
        # Bounded so a long benchmark run cannot grow the sandbox without end.
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self._count = 0
        self._dispatch = 0

    def next_dispatch(self) -> int:
        """An id shared by the primary and fallback attempts of one event send."""
        with self._lock:
            self._dispatch += 1
            return self._dispatch

    def append(self, entry: dict[str, Any]) -> None:
        """Record one attempt."""
        with self._lock:
            self._count += 1
            entry["id"] = self._count
            self._entries.append(entry)

    def entries(self, message_id: str | None = None) -> list[dict[str, Any]]:
        """All attempts, or those of one message."""
        with self._lock:
            return [dict(e) for e in self._entries if message_id in (None, e["messageId"])]

    def reset(self) -> None:
        """Forget every attempt."""
        with self._lock:
            self._entries.clear()
            self._count = 0
            self._dispatch = 0
