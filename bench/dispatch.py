"""The dispatcher: messages per second into the sandbox (its own process), unpaced and paced.

The dispatcher runs in this process (``Dispatcher(app).run_once()`` in a loop, as the worker
role does); the sandbox runs as ``flask --app wsgi sandbox`` in another. Its events are
scheduled ten minutes out, so no callback traffic competes with the sends being measured.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from . import seed
from .servers import (
    BIN,
    ROOT,
    BenchError,
    Credentials,
    ManagedProcess,
    base_env,
    environment,
    migrate,
    relay_env,
)

TARGET_RATE = 1000.0
TARGET_PACING = 0.02
SANDBOX = {"user": "u-bench", "token": "t-bench", "secret": "s-bench"}


@dataclass(frozen=True)
class Params:
    messages: int = 5_000
    paced_mps: float = 50.0
    paced_s: float = 10.0
    limit_s: float = 120.0  # give up on the unpaced run after this long


QUICK = Params(messages=1_000, paced_s=4.0)


def start_sandbox(workdir: Path, name: str, mps: float) -> tuple[ManagedProcess, str]:
    """``flask --app wsgi sandbox`` on a port the OS picks; events scheduled 10 min out."""
    url_file = workdir / f"{name}.url"
    url_file.unlink(missing_ok=True)
    args = [
        str(BIN / "flask"),
        "--app",
        "wsgi",
        "sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--url-file",
        str(url_file),
        "--scenario",
        "perfect",
        "--seed",
        "1",
        "--delay-min-ms",
        "600000",
        "--delay-max-ms",
        "600000",
        "--mps",
        f"{mps:g}",
        "--user-id",
        SANDBOX["user"],
        "--token",
        SANDBOX["token"],
        "--secret",
        SANDBOX["secret"],
    ]
    process = ManagedProcess(name, args, base_env(), workdir / f"{name}.log", ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if url_file.exists() and url_file.read_text().strip():
            return process, url_file.read_text().strip()
        if not process.alive():
            break
        time.sleep(0.1)
    raise BenchError(f"the sandbox did not start:\n{process.log_tail()}")


def _app(database: Path, sandbox_url: str, mps: float):
    from app import create_app

    env = relay_env(
        database,
        Credentials(),
        CATAPULT_API_URL=sandbox_url,
        CATAPULT_USER_ID=SANDBOX["user"],
        CATAPULT_API_TOKEN=SANDBOX["token"],
        CATAPULT_API_SECRET=SANDBOX["secret"],
        CATAPULT_MPS=f"{mps:g}",
    )
    with environment(env):
        return create_app()


def _enqueue(app, n: int) -> None:
    from app import messaging
    from app.extensions import db

    rng = random.Random(5)
    pop = seed.Population(rng)
    with app.app_context():
        for start in range(0, n, 1000):
            items = [
                {"from": pop.sender(), "to": pop.recipient(), "text": pop.text()}
                for _ in range(min(1000, n - start))
            ]
            messaging.enqueue(db.session, items)
            db.session.commit()


def _statuses(app) -> Counter:
    from sqlalchemy import func, select

    from app.extensions import db
    from app.models import Message

    with app.app_context():
        rows = db.session.execute(select(Message.status, func.count()).group_by(Message.status))
        return Counter(dict(rows.all()))


def _rate_limited(app) -> int:
    """Messages the carrier answered 403 message-rate-limit at least once (sent again later)."""
    from sqlalchemy import func, select

    from app.extensions import db
    from app.models import Message

    with app.app_context():
        return db.session.scalar(select(func.count()).where(Message.attempts > 1)) or 0


def unpaced(workdir: Path, params: Params, log=print) -> dict:
    """Enqueue N, then ``run_once`` until nothing is queued; messages per second."""
    from app.dispatcher import Dispatcher

    database = workdir / "dispatch.sqlite3"
    migrate(database)
    sandbox, url = start_sandbox(workdir, "sandbox-unpaced", mps=0)
    with sandbox:
        app = _app(database, url, mps=0)
        _enqueue(app, params.messages)
        dispatcher = Dispatcher(app)
        handled, requests, idle = 0, 0, 0
        started = time.perf_counter()
        while handled < params.messages and time.perf_counter() - started < params.limit_s:
            n = dispatcher.run_once()
            if n:
                handled += n
                requests += 1
            else:
                idle += 1
                if _statuses(app)["queued"] == 0:
                    break
                time.sleep(dispatcher.next_delay())
        elapsed = time.perf_counter() - started
        dispatcher.release()
        statuses = _statuses(app)
    rate = handled / elapsed if elapsed else 0.0
    log(f"dispatch: {handled:,} messages in {elapsed:.2f} s = {rate:,.0f}/s")
    return {
        "messages": handled,
        "seconds": round(elapsed, 3),
        "rate": rate,
        "carrier_requests": requests,
        "idle_iterations": idle,
        "batch_mean": handled / requests if requests else 0,
        "statuses": dict(statuses),
    }


def paced(workdir: Path, params: Params, log=print) -> dict:
    """CATAPULT_MPS=N for a while (the sandbox enforces the same rate): achieved / target."""
    from app.dispatcher import Dispatcher

    database = workdir / "dispatch-paced.sqlite3"
    migrate(database)
    sandbox, url = start_sandbox(workdir, "sandbox-paced", mps=params.paced_mps)
    with sandbox:
        app = _app(database, url, mps=params.paced_mps)
        _enqueue(app, int(params.paced_mps * params.paced_s * 1.5) + 100)
        dispatcher = Dispatcher(app)
        sends: list[tuple[float, int]] = []
        started = time.perf_counter()
        end = started + params.paced_s
        while True:
            n = dispatcher.run_once()
            now = time.perf_counter()
            if n:
                sends.append((now, n))
            if now >= end:
                break
            time.sleep(min(dispatcher.next_delay(), max(0.0, end - now)))
        elapsed = time.perf_counter() - started
        dispatcher.release()
        limited = _rate_limited(app)
    total = sum(n for _, n in sends)
    achieved = total / elapsed if elapsed else 0.0
    # Steady state: leave out the first request (GCRA's tolerance lets a few go at once).
    steady = (total - sends[0][1]) / (sends[-1][0] - sends[0][0]) if len(sends) > 2 else achieved
    log(f"dispatch: paced at {params.paced_mps:g}/s: {achieved:.2f}/s achieved")
    return {
        "target": params.paced_mps,
        "seconds": round(elapsed, 3),
        "messages": total,
        "achieved": achieved,
        "steady": steady,
        "carrier_requests": len(sends),
        "rate_limited": limited,
    }


def run(workdir: Path, quick: bool = False, log=print) -> dict:
    params = QUICK if quick else Params()
    return {
        "params": asdict(params),
        "unpaced": unpaced(workdir, params, log),
        "paced": paced(workdir, params, log),
    }


def markdown(result: dict) -> str:
    u, p = result["unpaced"], result["paced"]
    ratio = p["achieved"] / p["target"]
    out = [
        "## Dispatcher into the sandbox",
        "",
        "`Dispatcher.run_once()` in a loop in the bench process; the sandbox (`flask --app wsgi "
        "sandbox`, scenario perfect) in its own process; fresh SQLite database each run.",
        "",
        "| figure | value | target | |",
        "|---|---:|---|---|",
        f"| unpaced: {u['messages']:,} messages in {u['seconds']:.2f} s | "
        f"**{u['rate']:,.0f} msg/s** | ≥ {TARGET_RATE:,.0f}/s | "
        f"{'✅' if u['rate'] >= TARGET_RATE else '❌'} |",
        f"| unpaced: carrier requests (mean batch) | {u['carrier_requests']:,} "
        f"({u['batch_mean']:.1f}) | batches of 50 | |",
        f"| paced at CATAPULT_MPS={p['target']:g}: achieved over {p['seconds']:.1f} s | "
        f"{p['achieved']:.2f} msg/s (**{ratio:.3f}x**) | within {TARGET_PACING:.0%} | "
        f"{'✅' if abs(ratio - 1) <= TARGET_PACING else '❌'} |",
        f"| paced: steady-state rate (after the first request) | {p['steady']:.2f} msg/s | | |",
        f"| paced: messages the carrier refused as over its rate (403) | {p['rate_limited']} "
        "| 0 | |",
        "",
        "Statuses after the unpaced run: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(u["statuses"].items()))
        + ".",
    ]
    return "\n".join(out) + "\n"
