"""Seed data for the benchmarks, written with sqlite3 directly on the migrated schema.

Rows look like the ones the relay writes itself (the same text formats: naive-UTC
``YYYY-MM-DD HH:MM:SS.ffffff`` datetimes, 0/1 booleans, JSON text), relay ids are generated
like ``app.ids.new_id`` for each message's creation time, carrier ids like the sandbox's.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from app.ids import _ALPHABET

from .servers import BenchError

try:
    from app.models import tag_key
except ImportError:  # an older schema without Message.tag_key

    def tag_key(tag: str | None) -> str | None:
        return tag


CACHE = Path(__file__).resolve().parent / ".cache"
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]
USER_ID = "u-bench"
API = "https://api.catapult.inetwork.com"
RELAY = "http://***:***@relay.bench"

DELIVERED = "Message delivered to carrier"
NOT_DELIVERED = {  # catapult-v1.md §3 codes and the carrier's descriptions
    720: "Invalid destination address",
    770: "Destination rejected, spam",
    902: "Message expired",
    650: "Destination failure",
    999: "Unknown error",
    775: "Rejected, user opt-out",
    630: "NACK",
}
TEXTS = (
    "Your verification code is {n}",
    "Your order #{n} has shipped and will arrive tomorrow.",
    "Reminder: your appointment is on {d} at 10:30. Reply C to confirm, R to reschedule.",
    "Hi! Your table for {k} is ready. Please come to the host stand.",
    "Flash sale: {k}0% off everything until midnight. Reply STOP to opt out.",
    "Your driver is {k} minutes away.",
    "Payment of ${n} received, thank you.",
)
INBOUND_TEXTS = ("Thanks!", "C", "STOP", "Who is this?", "ok", "R", "\U0001f44d")
CAMPAIGNS = [f"campaign-{season}-{i}" for season in ("spring", "summer", "fall") for i in range(7)]


def fmt(moment: datetime) -> str:
    """How SQLAlchemy stores a UTCDateTime on SQLite."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Ids:
    """Relay ids as ``app.ids.new_id`` makes them (48-bit ms + 80 random bits, monotonic),
    for given times; carrier ids like the sandbox's."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.last = 0

    def relay(self, moment: datetime) -> str:
        value = (int(moment.timestamp() * 1000) << 80) | self.rng.getrandbits(80)
        if value <= self.last:
            value = self.last + 1
        self.last = value
        chars = []
        for _ in range(26):
            chars.append(_ALPHABET[value & 31])
            value >>= 5
        return "rm-" + "".join(reversed(chars))

    def carrier(self) -> str:
        return "m-" + "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz234567", k=23))


# ------------------------------------------------------------------ schema and cache


def schema_hash(database: Path) -> str:
    """The migrated schema (every CREATE statement and the Alembic revision), hashed."""
    con = sqlite3.connect(database)
    try:
        rows = con.execute(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        revision = con.execute("SELECT version_num FROM alembic_version").fetchall()
    finally:
        con.close()
    return hashlib.sha256(repr((rows, revision)).encode()).hexdigest()[:12]


def connect_for_bulk(database: Path) -> sqlite3.Connection:
    """Fast and unsafe while seeding (a half-written file is never renamed into the cache)."""
    con = sqlite3.connect(database, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-1000000")
    con.execute("PRAGMA temp_store=MEMORY")
    return con


def finish(con: sqlite3.Connection) -> None:
    """Back to the journal mode the relay uses (it also sets WAL on every connection)."""
    con.execute("PRAGMA journal_mode=WAL")
    con.close()


def count(database: Path, table: str) -> int:
    con = sqlite3.connect(database)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


MESSAGE_COLUMNS = (
    "id",
    "direction",
    "from_number",
    "to_number",
    "text",
    "media",
    "tag",
    "tag_key",
    "receipt_requested",
    "callback_http_method",
    "callback_timeout",
    "status",
    "carrier_message_id",
    "state",
    "delivery_state",
    "delivery_code",
    "delivery_description",
    "segment_count",
    "error",
    "code_mismatch",
    "created_at",
    "updated_at",
    "accepted_at",
    "final_at",
    "receipt_seconds",
    "attempts",
    "next_attempt_at",
    "claimed_by",
    "carrier_request",
    "carrier_response",
    "reconciled_at",
)
EVENT_COLUMNS = (
    "received_at",
    "via",
    "method",
    "raw",
    "content_type",
    "user_agent",
    "payload",
    "message_id",
    "carrier_message_id",
    "tag",
    "event_type",
    "direction",
    "state",
    "delivery_state",
    "delivery_code",
    "applied",
    "status_after",
    "duplicate",
    "late",
    "parked",
    "attached_at",
    "unparseable",
    "code_mismatch",
)


class SchemaDrift(BenchError):
    """The migrated schema has a required column this seeder does not fill."""


def inserter(con: sqlite3.Connection, table: str, provided: tuple[str, ...]):
    """(INSERT statement, row picker) for the columns of ``provided`` that ``table`` has, so a
    new nullable column does not break seeding; a new required one stops it with its name."""
    info = con.execute(f"PRAGMA table_info({table})").fetchall()  # cid, name, type, notnull, ...
    names = {row[1] for row in info}
    required = {row[1] for row in info if row[3] and row[4] is None and not row[5]}
    if missing := sorted(required - set(provided)):
        raise SchemaDrift(f"bench/seed.py does not fill {table}.{', '.join(missing)}: update it")
    keep = [i for i, column in enumerate(provided) if column in names]
    columns = [provided[i] for i in keep]
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    return sql, operator.itemgetter(*keep)


# ------------------------------------------------------------------ one message


class Population:
    """Numbers, tags and texts with realistic skew: a few hundred sender numbers (some much
    busier than others), many recipients, tags that repeat (campaigns) or nearly never do."""

    def __init__(self, rng: random.Random, senders: int = 300, recipients: int = 250_000):
        self.rng = rng
        self.senders = [f"+1919{5550000 + i:07d}" for i in range(senders)]
        self.sender_weights = [1 / (k + 1) ** 0.8 for k in range(senders)]
        self.recipients = recipients

    def sender(self) -> str:
        return self.rng.choices(self.senders, self.sender_weights)[0]

    def recipient(self) -> str:
        return f"+1{2000000000 + self.rng.randrange(self.recipients) * 7919 % 7999999999:010d}"

    def tag(self) -> str | None:
        roll = self.rng.random()
        if roll < 0.12:
            return self.rng.choice(CAMPAIGNS)
        if roll < 0.35:
            return f"order-{self.rng.randrange(200_000)}"
        return None

    def text(self) -> str:
        template = self.rng.choice(TEXTS)
        return template.format(
            n=self.rng.randrange(100000, 999999), k=self.rng.randrange(2, 9), d="May 14"
        )


def message_row(msg: dict) -> tuple:
    return tuple(msg.get(column) for column in MESSAGE_COLUMNS)


def outbound(ids: Ids, pop: Population, created: datetime, status: str) -> dict:
    """An outbound message row (as dict) in ``status``, with the fields that status implies."""
    rng = pop.rng
    relay_id = ids.relay(created)
    media = (
        [f"https://cdn.example.com/img/{rng.randrange(10**6)}.jpg"] if rng.random() < 0.05 else None
    )
    method = "GET" if rng.random() < 0.2 else "POST"
    msg = {
        "id": relay_id,
        "direction": "out",
        "from_number": pop.sender(),
        "to_number": pop.recipient(),
        "text": pop.text(),
        "tag": pop.tag(),
        "media": json.dumps(media) if media else None,
        "callback_http_method": method,
        "status": status,
        "code_mismatch": 0,
        "created_at": fmt(created),
        "attempts": 1,
    }
    msg["tag_key"] = tag_key(msg["tag"])
    request = {"from": msg["from_number"], "to": msg["to_number"], "text": msg["text"]}
    if media:
        request["media"] = media
    request.update(
        {
            "callbackUrl": f"{RELAY}/callbacks/catapult",
            "fallbackUrl": f"{RELAY}/callbacks/catapult/fallback",
            "callbackHttpMethod": method,
            "callbackTimeout": 10000,
            "tag": relay_id,
        }
    )
    if not media:
        request["receiptRequested"] = "all"
    msg["carrier_request"] = json.dumps(request)
    updated = created + timedelta(seconds=rng.uniform(0.05, 0.5))
    if status in ("queued",):
        msg.update(attempts=0, carrier_request=None)
    elif status == "rejected":
        error = {
            "category": "bad-request",
            "code": "invalid-destination",
            "message": "The destination number is not valid",
        }
        msg.update(
            error=json.dumps(error),
            final_at=fmt(updated),
            carrier_response=json.dumps({"status": 400, "headers": {}, "body": error}),
        )
    elif status == "unknown":
        msg["error"] = json.dumps(
            {
                "category": "unavailable",
                "code": "timeout",
                "message": "The carrier did not answer in time.",
            }
        )
    elif status != "sending":
        carrier = ids.carrier()
        msg.update(carrier_message_id=carrier, accepted_at=fmt(updated))
        msg["carrier_response"] = json.dumps(
            {
                "status": 202,
                "headers": {"Content-Type": "application/json"},
                "body": {
                    "result": "accepted",
                    "location": f"{API}/v1/users/{USER_ID}/messages/{carrier}",
                },
            }
        )
        msg["_accepted"] = updated
    msg["updated_at"] = fmt(updated)
    msg["_created"] = created
    return msg


def catapult_event(msg: dict, state: str, delivery: tuple[str, int, str] | None = None) -> dict:
    """The fields the carrier sends for one event of ``msg`` (catapult-v1.md §3)."""
    carrier = msg["carrier_message_id"]
    event = {
        "eventType": "mms" if msg.get("media") else "sms",
        "direction": msg["direction"],
        "messageId": carrier,
        "messageUri": f"{API}/v1/users/{USER_ID}/messages/{carrier}",
        "from": msg["from_number"],
        "to": msg["to_number"],
        "text": msg["text"],
        "time": iso(msg["_created"]),
        "state": state,
        "segmentCount": 1,
    }
    if msg["direction"] == "out":
        event["tag"] = msg["id"]
    else:
        event["applicationId"] = "a-bench"
    if delivery is not None:
        event["deliveryState"], event["deliveryCode"], event["deliveryDescription"] = delivery
    return event


def encode(event: dict, method: str) -> tuple[str, dict]:
    """(raw, payload) as the relay stores them: the JSON body, or the query string (GET)."""
    if method == "GET":
        payload = {k: str(v) for k, v in event.items()}
        return urlencode(payload), payload
    return json.dumps(event, separators=(",", ":")), event


# ------------------------------------------------------------------ ingest seed + corpus


def accepted_messages(n: int, seed: int = 1) -> list[dict]:
    """``n`` outbound messages, ``accepted`` by the carrier a moment ago, waiting for events."""
    rng = random.Random(seed)
    ids, pop = Ids(rng), Population(rng)
    start = datetime.now(UTC) - timedelta(minutes=10)
    return [outbound(ids, pop, start + timedelta(milliseconds=i * 5), "accepted") for i in range(n)]


def seed_accepted(database: Path, n: int, seed: int = 1) -> list[dict]:
    """Insert ``accepted_messages(n)``; returns them (for the callback corpus)."""
    messages = accepted_messages(n, seed)
    con = connect_for_bulk(database)
    sql, pick = inserter(con, "messages", MESSAGE_COLUMNS)
    con.execute("BEGIN")
    con.executemany(sql, (pick(message_row(m)) for m in messages))
    con.execute("COMMIT")
    finish(con)
    return messages


def write_callback_corpus(path: Path, messages: list[dict], seed: int = 2, block: int = 500) -> int:
    """Each message's ``sent`` event, then (``block`` messages later) its delivery receipt:
    90 % delivered (code 0), 10 % not delivered with a carrier code; POST JSON or GET query as
    the message asked. Returns the number of lines (METHOD, path+query, body)."""
    rng = random.Random(seed)
    order = list(messages)
    rng.shuffle(order)
    lines = []
    for start in range(0, len(order), block):
        chunk = order[start : start + block]
        for phase in ("sent", "receipt"):
            for msg in chunk:
                delivery = None
                if phase == "receipt":
                    if rng.random() < 0.9:
                        delivery = ("delivered", 0, DELIVERED)
                    else:
                        code = rng.choice(list(NOT_DELIVERED))
                        delivery = ("not-delivered", code, NOT_DELIVERED[code])
                event = catapult_event(msg, "sent", delivery)
                raw, _ = encode(event, msg["callback_http_method"])
                if msg["callback_http_method"] == "GET":
                    lines.append(f"GET\t/callbacks/catapult?{raw}\t")
                else:
                    lines.append(f"POST\t/callbacks/catapult\t{raw}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


# ------------------------------------------------------------------ the status API at scale

OUT_STATUSES = {  # outbound messages older than a few minutes
    "delivered": 0.86,
    "not-delivered": 0.06,
    "sent": 0.03,
    "error": 0.015,
    "rejected": 0.01,
    "accepted": 0.01,
    "unknown": 0.005,
}
RECENT_STATUSES = {"queued": 0.2, "sending": 0.05, "accepted": 0.35, "sent": 0.4}
BASE_EVENTS = {"delivered": 2, "not-delivered": 2, "sent": 1, "error": 1, "received": 1}
INBOUND_SHARE = 0.04
UNMATCHED_SHARE = 0.003  # of the extra events: parked / never matched


def plan(n: int, rng: random.Random, end: datetime, days: int = 30):
    """Creation times (sorted, spread over ``days``) and statuses for ``n`` messages."""
    span = days * 86400.0
    offsets = sorted(rng.random() * span for _ in range(n))
    out_names, out_weights = list(OUT_STATUSES), list(OUT_STATUSES.values())
    recent_names, recent_weights = list(RECENT_STATUSES), list(RECENT_STATUSES.values())
    start = end - timedelta(seconds=span)
    times, statuses = [], []
    for offset in offsets:
        created = start + timedelta(seconds=offset)
        times.append(created)
        if rng.random() < INBOUND_SHARE:
            statuses.append("received")
        elif (end - created).total_seconds() < 300:
            statuses.append(rng.choices(recent_names, recent_weights)[0])
        else:
            statuses.append(rng.choices(out_names, out_weights)[0])
    return times, statuses


def _event_row(
    msg: dict,
    event: dict,
    received: datetime,
    *,
    via: str = "primary",
    applied: bool = True,
    duplicate: bool = False,
    parked: bool = False,
) -> tuple:
    method = msg["callback_http_method"]
    raw, payload = encode(event, method)
    code = event.get("deliveryCode")
    return (
        fmt(received),
        via,
        method,
        raw,
        "application/json; charset=utf-8" if method == "POST" else None,
        "BandwidthAPI/v1",
        json.dumps(payload),
        None if parked else msg["id"],
        event["messageId"],
        event.get("tag"),
        event["eventType"],
        event["direction"],
        event["state"],
        event.get("deliveryState"),
        code,
        int(applied),
        _status_after(event) if applied else None,
        int(duplicate),
        0,
        int(parked),
        None,
        0,
        0,
    )


def _status_after(event: dict) -> str:
    """The message status right after this event was applied."""
    return event.get("deliveryState") or event["state"]


def finalize(msg: dict, rng: random.Random) -> list[tuple[dict, datetime]]:
    """Fill in the receipt fields of ``msg``; return its carrier events with receive times."""
    status, accepted = msg["status"], msg.get("_accepted")
    if status == "received":
        msg.update(
            state="received",
            final_at=msg["created_at"],
            accepted_at=msg["created_at"],
            segment_count=1,
        )
        return [(catapult_event(msg, "received"), msg["_created"])]
    if accepted is None or status in ("accepted", "unknown"):
        return []
    sent_at = accepted + timedelta(seconds=rng.uniform(0.1, 1.5))
    msg.update(state="sent", segment_count=1, updated_at=fmt(sent_at))
    events = []
    if status == "error":
        msg.update(state="error", delivery_code=999, final_at=fmt(sent_at))
        return [(catapult_event(msg, "error"), sent_at)]
    events.append((catapult_event(msg, "sent"), sent_at))
    if status in ("delivered", "not-delivered"):
        final = sent_at + timedelta(seconds=min(3600.0, rng.lognormvariate(0.7, 0.9)))
        if status == "delivered":
            delivery = ("delivered", 0, DELIVERED)
        else:
            code = rng.choice(list(NOT_DELIVERED))
            delivery = ("not-delivered", code, NOT_DELIVERED[code])
        msg.update(
            delivery_state=delivery[0],
            delivery_code=delivery[1],
            delivery_description=delivery[2],
            final_at=fmt(final),
            updated_at=fmt(final),
            receipt_seconds=(final - accepted).total_seconds(),
        )
        events.append((catapult_event(msg, "sent", delivery), final))
    return events


def inbound(ids: Ids, pop: Population, created: datetime) -> dict:
    """An inbound message (a reply to one of our numbers)."""
    return {
        "id": ids.relay(created),
        "direction": "in",
        "from_number": pop.recipient(),
        "to_number": pop.sender(),
        "text": pop.rng.choice(INBOUND_TEXTS),
        "status": "received",
        "carrier_message_id": ids.carrier(),
        "callback_http_method": "POST",
        "code_mismatch": 0,
        "created_at": fmt(created),
        "updated_at": fmt(created),
        "attempts": 0,
        "_created": created,
    }


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def seed_scale(
    database: Path,
    n_messages: int,
    n_events: int,
    seed: int = 3,
    chunk: int = 20_000,
    progress=print,
    days: int = 30,
) -> dict:
    """``n_messages`` messages over the last ``days`` days and exactly ``n_events`` callback events:
    each message's own events (sent, receipt, inbound...), then duplicates and a few events
    that never matched, to reach the total."""
    rng = random.Random(seed)
    ids, pop = Ids(rng), Population(rng)
    end = datetime.now(UTC) - timedelta(seconds=30)
    times, statuses = plan(n_messages, rng, end, days)
    base = sum(BASE_EVENTS.get(s, 0) for s in statuses)
    extra_total = n_events - base
    if extra_total < 0:
        raise ValueError(f"{n_events} events is fewer than the {base} the messages imply")
    con = connect_for_bulk(database)
    indexes = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    ).fetchall()
    for name, _sql in indexes:  # rebuilt at the end: sorting once beats a million inserts
        con.execute(f"DROP INDEX {name}")
    insert_message, pick_message = inserter(con, "messages", MESSAGE_COLUMNS)
    insert_event, pick_event = inserter(con, "callback_events", EVENT_COLUMNS)
    chunks = math.ceil(n_messages / chunk)
    extra_done = 0
    for number, (lo, hi) in enumerate(_chunks(n_messages, chunk)):
        messages, events = [], []
        for created, status in zip(times[lo:hi], statuses[lo:hi], strict=True):
            msg = (
                inbound(ids, pop, created)
                if status == "received"
                else outbound(ids, pop, created, status)
            )
            own = finalize(msg, rng)
            messages.append(msg)
            events.extend(
                _event_row(msg, event, at, via="primary" if rng.random() < 0.95 else "fallback")
                for event, at in own
            )
            msg["_events"] = own
        quota = round(extra_total * (number + 1) / chunks) - extra_done
        extra_done += quota
        events.extend(_extras(messages, quota, rng, ids))
        events.sort(key=lambda row: row[0])
        con.execute("BEGIN")
        con.executemany(insert_message, (pick_message(message_row(m)) for m in messages))
        con.executemany(insert_event, map(pick_event, events))
        con.execute("COMMIT")
        if progress and (number + 1) % 10 == 0:
            progress(f"  seeded {hi:,} of {n_messages:,} messages")
    for name, sql in indexes:
        progress(f"  building index {name}")
        con.execute(sql)
    finish(con)
    return {"messages": n_messages, "events": n_events, "seeded_at": end.isoformat()}


def _extras(messages: list[dict], quota: int, rng: random.Random, ids: Ids) -> list[tuple]:
    """``quota`` more events: duplicates of a message's events (the carrier reached both the
    primary and the fallback URL, or resent), and a few for carrier ids the relay never had."""
    with_events = [m for m in messages if m["_events"]]
    rows = []
    for _ in range(quota):
        if not with_events or rng.random() < UNMATCHED_SHARE:
            stranger = dict(rng.choice(messages))
            stranger.update(carrier_message_id=ids.carrier(), direction="out")
            event = catapult_event(stranger, "sent")
            event.pop("tag", None)
            rows.append(
                _event_row(stranger, event, stranger["_created"], applied=False, parked=True)
            )
            continue
        msg = rng.choice(with_events)
        event, at = rng.choice(msg["_events"])
        later = at + timedelta(seconds=rng.uniform(0.05, 30))
        rows.append(
            _event_row(
                msg,
                event,
                later,
                via=rng.choice(("primary", "fallback")),
                applied=False,
                duplicate=True,
            )
        )
    return rows


def random_rows(database: Path, sql: str, k: int, seed: int = 4) -> list[tuple]:
    """``k`` random rows of ``messages`` picked by rowid (``sql`` selects from messages and
    ends with ``WHERE rowid IN (...)`` left to this function)."""
    rng = random.Random(seed)
    con = sqlite3.connect(database)
    try:
        top = con.execute("SELECT max(rowid) FROM messages").fetchone()[0] or 0
        picks = rng.sample(range(1, top + 1), min(k, top))
        rows = []
        for start in range(0, len(picks), 500):
            part = picks[start : start + 500]
            rows += con.execute(
                f"{sql} WHERE rowid IN ({','.join('?' * len(part))})", part
            ).fetchall()
        return rows
    finally:
        con.close()
