"""The browser dashboard under /dashboard: where is my message, and what did the carrier say?

Server-rendered pages behind the dashboard's Basic credentials. Every page has one live
fragment that static/dashboard.js re-fetches (``X-Partial: 1``) every few seconds. Lists page
by keyset on the id (newest first) and never count the whole table, so they stay fast with a
million messages.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
from datetime import UTC, datetime, timedelta

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import BigInteger, Integer, cast, func, select
from werkzeug.exceptions import HTTPException, InternalServerError

from . import queries, rollups
from .catapult import redact_text as redact
from .errors import RETRY_AFTER_S, ApiError, database_unavailable, rollback_quietly
from .extensions import db
from .ids import id_floor
from .ingest import EXTENSION as INGEST
from .models import STATUSES, CallbackEvent, Message, Rollup, utcnow
from .reconcile import find_message
from .security import auth_failed, authorization, basic_failure

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
)

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_SIZE = 50
WINDOWS = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
}
# Overview chart: seconds per bucket for each window (a few dozen points per line).
CHART_STEPS = {"15m": 60, "1h": 60, "6h": 300, "24h": 3600, "7d": 3600}
# Short of a final status this long after creation: worth a look (or a reconcile).
STUCK_AFTER = timedelta(minutes=5)
STUCK_STATUSES = ("queued", "sending", "unknown", "accepted", "sent")
# catapult-v1.md §3: what the carrier's deliveryCode means, for receipts without a description.
DELIVERY_CODES = {
    0: "Delivered to carrier",
    100: "Not delivered to carrier",
    187: "Spam (statistical)",
    188: "Spam (keyword)",
    189: "Spam (generic)",
    482: "Loop detected",
    600: "Destination carrier queue full",
    610: "submit_sm failed",
    620: "Destination app error",
    630: "NACK",
    650: "Destination failure",
    700: "Invalid service type",
    720: "Invalid destination address",
    740: "Invalid source address",
    750: "Destination rejected message",
    751: "Destination rejected message (too large)",
    770: "Destination rejected, spam",
    775: "Rejected, user opt-out",
    902: "Message expired",
    999: "Unknown error",
}
# ---------------------------------------------------------------- auth, CSRF, headers


@bp.before_request
def require_basic_auth():
    """Every dashboard URL (pages and static files) needs the dashboard's Basic credentials."""
    cfg, auth = current_app.config, authorization()
    user, password = cfg.get("DASHBOARD_USERNAME") or "", cfg.get("DASHBOARD_PASSWORD") or ""
    if auth is not None and auth.type == "basic" and user and password:
        # `&`, not `and`: both compares always run, so timing says nothing about which failed.
        if _same(auth.username, user) & _same(auth.password, password):
            return None
    auth_failed("dashboard", basic_failure(request.headers.get("Authorization", "")))
    return Response(
        "<!doctype html><title>401</title><p>The dashboard needs its username and password.",
        401,
        {"WWW-Authenticate": 'Basic realm="relay dashboard", charset="UTF-8"'},
        mimetype="text/html",
    )


def _same(given: str | None, expected: str) -> bool:
    return hmac.compare_digest((given or "").encode(), expected.encode())


@bp.after_request
def security_headers(response: Response) -> Response:
    """No framing and no inline script, so even an escaping slip cannot run code."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "dashboard.static":
        # Pages show message text and numbers: keep them out of shared caches.
        response.headers["Cache-Control"] = "no-store"
    return response


def csrf_token() -> str:
    """This browser session's token for POST forms (kept in the signed session cookie)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _check_csrf() -> None:
    sent, expected = request.form.get("csrf_token", ""), session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "The form is missing its security token (or it expired): reload the page.")


@bp.errorhandler(HTTPException)
def html_error(err: HTTPException):
    """Errors raised by dashboard views as a page, not the API's JSON envelope."""
    return render_template("dashboard/error.html", error=err), err.code or 500


@bp.errorhandler(Exception)
def html_crash(err: Exception):
    """An unexpected failure in a dashboard view: logged, and answered as a page; while the
    database is down, a page that says so (and what happens to callbacks meanwhile)."""
    if database_unavailable(err):
        current_app.logger.warning("dashboard: database unavailable: %s", err)
        rollback_quietly()
        page = render_template("dashboard/unavailable.html", retry_after=RETRY_AFTER_S)
        return page, 503, {"Retry-After": str(RETRY_AFTER_S), "Refresh": str(RETRY_AFTER_S)}
    current_app.logger.exception("dashboard failed on %s %s", request.method, request.path)
    rollback_quietly()
    return html_error(InternalServerError())


def journal_waiting() -> int:
    """Callbacks waiting in this host's journal (0 without a look when its marker is absent)."""
    ingest = current_app.extensions.get(INGEST)
    if ingest is None or not ingest.journal.active():
        return 0
    try:
        return ingest.journal.depth()[0]
    except Exception:  # an unreadable journal must not take the page down
        return 0


@bp.context_processor
def template_helpers() -> dict:
    """Helpers every dashboard template may call."""
    return {
        "csrf_token": csrf_token,
        "fmt_time": fmt_time,
        "pretty": pretty,
        "redact": redact,
        "page_url": page_url,
        "statuses": STATUSES,
        "windows": WINDOWS,
        "code_meaning": DELIVERY_CODES.get,
        "refresh_seconds": _refresh_seconds(),
        "journal_waiting": journal_waiting,
    }


# ---------------------------------------------------------------- pages


@bp.get("/")
def overview():
    """Counts, delivery rate, time to receipt, fallback share, stuck messages, chart."""
    window = request.args.get("window") if request.args.get("window") in CHART_STEPS else "1h"
    figures = _cached(("overview", window), WINDOWS[window] / 720, lambda: _figures(window))
    return _render("overview", window=window, stuck=_stuck(utcnow()), **figures)


def _figures(window: str) -> dict:
    now = utcnow()
    since = now - WINDOWS[window]
    return {
        "stats": queries.stats(db.session, since),
        "as_of": now,
        "chart": _chart(since, now, CHART_STEPS[window]),
    }


def _cached(key, ttl: timedelta, compute):
    """Window-wide figures scan the window, and every open overview asks again every few
    seconds: keep each answer this process computed for 1/720 of its window (5 s per hour)."""
    store = current_app.extensions.setdefault("dashboard.cache", {})
    now = time.monotonic()
    hit = store.get(key)
    if hit is None or hit[0] <= now:
        hit = store[key] = (now + ttl.total_seconds(), compute())
    return hit[1]


@bp.get("/messages")
def messages():
    """Messages newest first with filters; a relay or carrier id in the search box opens it."""
    query = request.args.get("q", "").strip()
    if query and (found := _lookup(query)) is not None:
        return redirect(url_for(".message", message_id=found.id))
    filters, errors = _message_filters(query)
    page = _keyset(_message_selects(filters), Message.id, _limit(), _cursors(str))
    return _render("messages", filters=filters, errors=errors, page=page, query=query)


@bp.get("/messages/<message_id>")
def message(message_id):
    """Every field of one message and its timeline: send exchange, events, transitions."""
    found = _message_or_404(message_id)
    events = db.session.scalars(
        select(CallbackEvent).where(CallbackEvent.message_id == found.id).order_by(CallbackEvent.id)
    ).all()
    return _render(
        "message",
        m=found,
        events=events,
        strays=_strays(found),
        transitions=_transitions(found, events),
    )


@bp.post("/messages/<message_id>/reconcile")
def reconcile_message(message_id):
    """Ask the carrier about the message now; its answer lands on the timeline."""
    _check_csrf()
    from .catapult import client_for
    from .reconcile import reconcile

    relay_id = _message_or_404(message_id).id
    try:
        found = reconcile(db.session, client_for(current_app), relay_id)
        db.session.commit()
        flash(f"The carrier answered: status is now {found.status}.", "ok")
    except ApiError as err:  # 409 no carrier id, 502 carrier unreachable: say so plainly
        db.session.rollback()
        flash(f"Reconcile failed ({err.status} {err.code}): {redact(err.message)}", "error")
    return redirect(url_for(".message", message_id=relay_id), 303)


@bp.get("/events")
def events():
    """The raw callback log newest first: unmatched only, via, method, carrier id, time."""
    filters, errors = _event_filters()
    page = _keyset([_event_select(filters)], CallbackEvent.id, _limit(), _cursors(int))
    return _render("events", filters=filters, errors=errors, page=page)


def _render(template: str, **context) -> Response:
    """The whole page, or only its live fragment when the refresh script asks for it."""
    partial = request.headers.get("X-Partial") == "1"
    name = f"dashboard/_{template}_live.html" if partial else f"dashboard/{template}.html"
    response = make_response(render_template(name, **context))
    response.vary.add("X-Partial")
    return response


# ---------------------------------------------------------------- lookups


def _lookup(value: str) -> Message | None:
    try:
        return find_message(db.session, value)
    except ApiError:
        return None


def _message_or_404(message_id: str) -> Message:
    found = _lookup(message_id)
    if found is None:
        abort(404, f"No message with id '{message_id}' (relay id rm-… or carrier id m-…).")
    return found


def _strays(message: Message):
    """Events naming this carrier id that are still attached to nothing (e.g. unparseable)."""
    if not message.carrier_message_id:
        return []
    return db.session.scalars(
        select(CallbackEvent)
        .where(
            CallbackEvent.carrier_message_id == message.carrier_message_id,
            CallbackEvent.message_id.is_(None),
        )
        .order_by(CallbackEvent.id)
        .limit(100)
    ).all()


def _transitions(message: Message, events) -> list[tuple[str, datetime | None, str]]:
    """(status, when, why) in time order: creation, the send's outcome, each applied event."""
    first = "received" if message.direction == "in" else "queued"
    steps = [(first, message.created_at, "created")]
    if message.accepted_at and message.direction == "out":
        steps.append(("accepted", message.accepted_at, "carrier accepted the send"))
    if message.status in ("rejected", "unknown"):
        steps.append((message.status, message.final_at or message.updated_at, "send outcome"))
    for event in events:
        if event.applied and event.status_after and message.direction == "out":
            steps.append(
                (event.status_after, event.received_at, f"event #{event.id} via {event.via}")
            )
    return sorted(steps, key=lambda step: step[1] or message.created_at)


# ---------------------------------------------------------------- filters and keyset pages


def _limit() -> int:
    return min(max(request.args.get("limit", PAGE_SIZE, type=int), 1), 200)


def _cursors(kind) -> tuple:
    """(after, before): page older than ``after`` or newer than ``before``."""
    try:
        return tuple(
            kind(request.args[k]) if request.args.get(k) else None for k in ("after", "before")
        )
    except ValueError:
        abort(400, "Invalid page cursor.")


def _parse_time(raw: str) -> datetime:
    value = datetime.fromisoformat(raw.strip())
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time_window(errors: list[str]) -> tuple[datetime | None, datetime | None]:
    """``window`` (last 15m … 7d) or ``since``/``until`` (ISO 8601, UTC when no zone)."""
    args = request.args
    since = utcnow() - WINDOWS[args["window"]] if args.get("window") in WINDOWS else None
    until = None
    for name in ("since", "until"):
        if args.get(name, "").strip():
            try:
                value = _parse_time(args[name])
            except ValueError:
                errors.append(f"Ignored '{name}': not a date and time ({args[name]}).")
                continue
            since, until = (value, until) if name == "since" else (since, value)
    return since, until


def _message_filters(query: str) -> tuple[dict, list[str]]:
    args, errors = request.args, []
    since, until = _time_window(errors)
    raw = args.get("number", "")
    number = re.sub(r"[\s().-]", "", raw)
    if raw.startswith(" ") and number[:1].isdigit():
        number = "+" + number  # a hand-typed URL turns "+1555…" into " 1555…"
    return {
        "status": args.get("status") or None,
        "direction": args.get("direction") or None,
        "tag": args.get("tag") or query or None,
        "number": number or None,
        "since": since,
        "until": until,
    }, errors


def _message_selects(f: dict) -> list:
    """One statement per index path: a number matches ``from`` or ``to``, so it becomes two
    queries, each walking its own (number, id) index, merged in ``_keyset``."""
    stmt = select(Message)
    for name in ("status", "direction", "tag"):
        if f[name]:
            stmt = stmt.where(queries.message_condition(name, f[name]))
    # created_at is the exact test; the id bounds (ids begin with their creation time) let a
    # (filter, id) index seek straight into the window instead of walking it from the top.
    if f["since"]:
        stmt = stmt.where(Message.created_at >= f["since"], Message.id >= id_floor(f["since"]))
    if f["until"]:
        stmt = stmt.where(
            Message.created_at < f["until"],
            Message.id < id_floor(f["until"] + timedelta(seconds=1)),
        )
    if not f["number"]:
        return [stmt]
    return [
        stmt.where(Message.from_number == f["number"]),
        stmt.where(Message.to_number == f["number"]),
    ]


def _event_filters() -> tuple[dict, list[str]]:
    args, errors = request.args, []
    since, until = _time_window(errors)
    method = (args.get("method") or "").upper()
    return {
        "unmatched": args.get("unmatched") == "1",
        "via": args.get("via") if args.get("via") in ("primary", "fallback", "reconcile") else None,
        "method": method if method in ("GET", "POST") else None,
        "carrier": (args.get("carrier") or "").strip() or None,
        "since": since,
        "until": until,
    }, errors


def _event_select(f: dict):
    stmt = select(CallbackEvent)
    if f["unmatched"]:
        stmt = stmt.where(CallbackEvent.message_id.is_(None))
    if f["via"]:
        stmt = stmt.where(CallbackEvent.via == f["via"])
    if f["method"]:
        stmt = stmt.where(CallbackEvent.method == f["method"])
    if f["carrier"]:
        stmt = stmt.where(CallbackEvent.carrier_message_id == f["carrier"])
    for bound, op in ((f["since"], "ge"), (f["until"], "lt")):
        if bound is not None:
            stmt = _event_time_bound(stmt, bound, op)
    return stmt


def _event_time_bound(stmt, when: datetime, op: str):
    """received_at is the exact test; an id bound found through the received_at index keeps
    sparse filters (via, method) from walking the whole log. Ids and receive times can be out
    of order by a lock wait (seconds), so the bound comes from an event a minute further out:
    the last one received before ``since`` - 1 min, the first one at ``until`` + 1 min."""
    slack = timedelta(minutes=1)
    if op == "ge":
        edge = db.session.scalar(
            select(CallbackEvent.id)
            .where(CallbackEvent.received_at < when - slack)
            .order_by(CallbackEvent.received_at.desc())
            .limit(1)
        )
        stmt = stmt.where(CallbackEvent.received_at >= when)
        return stmt.where(CallbackEvent.id > edge) if edge is not None else stmt
    edge = db.session.scalar(
        select(CallbackEvent.id)
        .where(CallbackEvent.received_at >= when + slack)
        .order_by(CallbackEvent.received_at)
        .limit(1)
    )
    stmt = stmt.where(CallbackEvent.received_at < when)
    return stmt.where(CallbackEvent.id < edge) if edge is not None else stmt


def _keyset(stmts: list, key, limit: int, cursors: tuple) -> dict:
    """A page newest first, from one or more statements merged, with older/newer cursors.

    ``before`` pages walk up (ascending) and are turned around; no COUNT is ever taken."""
    after, before = cursors
    rows = {}
    for stmt in stmts:
        if before is not None:
            stmt = stmt.where(key > before).order_by(key.asc())
        else:
            stmt = stmt.where(key < after) if after is not None else stmt
            stmt = stmt.order_by(key.desc())
        rows.update((row.id, row) for row in db.session.scalars(stmt.limit(limit + 1)))
    ordered = sorted(rows.values(), key=lambda row: row.id, reverse=before is None)
    more = len(ordered) > limit
    items = ordered[:limit]
    if before is not None:
        items.reverse()
    has_older = more if before is None else True
    has_newer = (after is not None) if before is None else more
    return {
        "items": items,
        "older": items[-1].id if items and has_older else None,
        "newer": items[0].id if items and has_newer else None,
        # An empty page past either end still offers the way back to the newest rows.
        "first": (after is not None or before is not None) and not items,
    }


def page_url(**changes) -> str:
    """This page's URL with the filters kept, cursors dropped and ``changes`` applied."""
    args = {k: v for k, v in request.args.items() if k not in ("after", "before")}
    args.update(changes)
    return url_for(
        request.endpoint,
        **(request.view_args or {}),
        **{k: v for k, v in args.items() if v not in (None, "")},
    )


# ---------------------------------------------------------------- overview figures


def _stuck(now: datetime) -> list[dict]:
    """Messages still short of a final status STUCK_AFTER after creation, per status.

    Counted on the (status, id) index alone: the id bound stands for the creation time."""
    cutoff = now - STUCK_AFTER
    rows = db.session.execute(
        select(Message.status, func.count())
        .where(Message.status.in_(STUCK_STATUSES), Message.id < id_floor(cutoff))
        .group_by(Message.status)
    ).all()
    counts = dict(rows)
    until = cutoff.isoformat(timespec="seconds")
    return [
        {"status": s, "count": counts.get(s, 0), "url": url_for(".messages", status=s, until=until)}
        for s in STUCK_STATUSES
    ]


def _epoch_bucket(column, step: int):
    """Seconds since the epoch, floored to ``step``, in the database's own dialect."""
    if db.session.get_bind().dialect.name == "sqlite":
        return cast(func.strftime("%s", column), Integer) // step
    return cast(func.floor(func.extract("epoch", column)), BigInteger) // step


def _chart(since: datetime, now: datetime, step: int) -> dict:
    """Messages sent per bucket of their creation time (taken by the carrier), and what became
    of them: delivered, not delivered, error, as SVG geometry.

    Buckets of 5 minutes or more come from the stats rollups where those cover the window
    (a few hundred rows for a week); the uncovered edges are one grouped query each."""
    covered = rollups.covered_until(db.session)
    first = rollups.ceil(since)
    live = [(since, None)]
    points: list[tuple[str, int, int]] = []
    if step % int(rollups.BUCKET.total_seconds()) == 0 and covered and first < covered:
        for bucket, status, count in db.session.execute(
            select(Rollup.bucket, Rollup.key, Rollup.count).where(
                Rollup.kind == "status", Rollup.bucket >= first, Rollup.bucket < covered
            )
        ):
            points += _chart_points(status, int(bucket.timestamp()) // step, count)
        live = [(since, first), (covered, None)]
    bucket = _epoch_bucket(Message.created_at, step)
    status = Message.status.concat("")  # an expression: SQLite walks created_at, not status
    for lo, hi in live:
        where = [Message.created_at >= lo] + ([Message.created_at < hi] if hi else [])
        for status_of, index, count in db.session.execute(
            select(status, bucket, func.count()).where(*where).group_by(status, bucket)
        ):
            points += _chart_points(status_of, index, count)
    last = int(now.timestamp()) // step  # the current, still filling bucket is the last
    return _chart_geometry(
        points, last - int((now - since).total_seconds()) // step + 1, last, step
    )


SENT_STATUSES = ("accepted", "sent", "delivered", "not-delivered", "error")


def _chart_points(status: str, index: int, count: int) -> list[tuple[str, int, int]]:
    """A status count as chart points: taken by the carrier is "sent"; final ones are theirs."""
    points = [("sent", index, count)] if status in SENT_STATUSES else []
    if status in FINAL_SERIES:
        points.append((status, index, count))
    return points


SERIES = (
    ("sent", "sent"),
    ("delivered", "delivered"),
    ("not-delivered", "not delivered"),
    ("error", "error / rejected"),
)
FINAL_SERIES = ("delivered", "not-delivered", "error", "rejected")


def _chart_geometry(rows, first: int, last: int, step: int) -> dict:
    """One polyline per series in a viewBox of one unit per bucket by 100, stretched to the
    box by CSS (so the chart fits a phone and a laptop alike); labels are HTML around it."""
    n = last - first + 1
    counts = {name: [0] * n for name, _ in SERIES}
    for name, bucket, count in rows:
        name = "error" if name == "rejected" else name
        if bucket is not None and first <= bucket <= last:
            counts[name][bucket - first] += count
    peak = max(max(c) for c in counts.values())
    top = max(2, peak + peak % 2)  # even, so the middle grid line is a whole number

    def when(i: int) -> str:
        return f"{datetime.fromtimestamp((first + i) * step, UTC):%Y-%m-%d %H:%M}"

    short = slice(11, 16) if n * step <= 86400 else slice(5, 16)
    return {
        "n": n,
        "top": top,
        "mid": top // 2,
        "step": step,
        "series": [
            {
                "name": name,
                "label": text,
                "total": sum(counts[name]),
                "points": " ".join(
                    f"{i + 0.5},{100 - v * 100 / top:.2f}" for i, v in enumerate(counts[name])
                ),
            }
            for name, text in SERIES
        ],
        "slots": [
            f"{when(i)} UTC: " + ", ".join(f"{text} {counts[name][i]}" for name, text in SERIES)
            for i in range(n)
        ],
        "ticks": [when(i)[short] for i in (0, n // 2, n - 1)],
    }


# ---------------------------------------------------------------- formatting


def fmt_time(value: datetime | None, ms: bool = False) -> str:
    """UTC, to the second (or millisecond on timelines, where event order matters)."""
    if value is None:
        return "—"
    text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f" if ms else "%Y-%m-%d %H:%M:%S")
    return text[:-3] if ms else text


def pretty(value) -> str:
    """JSON (or raw text) for a <pre>, credentials redacted; plain text, so Jinja escapes it."""
    if value is None:
        return "—"
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    )
    return redact(text)


def _refresh_seconds() -> float:
    return float(current_app.config.get("DASHBOARD_REFRESH_SECONDS", 5))
