"""The lease holder's housekeeping between two sends: ask the carrier about stale messages,
keep the stats rollups, and with ``RETENTION_DAYS`` prune old rows once a day.

Each task runs on its own interval of the dispatcher's monotonic clock, in short transactions
of its own, and only in the one active dispatcher (never on the callback path). Times it
compares with stored ones are the database's (the dispatcher passes ``now``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from . import reconcile, retention, rollups

log = logging.getLogger(__name__)

RECONCILE_INTERVAL = 5.0  # seconds between two looks for stale messages
ROLLUP_INTERVAL = 5.0  # seconds between two passes over the stats rollups
PRUNE_INTERVAL = 86400.0  # RETENTION_DAYS: one prune run a day, one batch per iteration


class Housekeeping:
    """The holder's periodic tasks; ``run`` once per dispatcher iteration."""

    def __init__(
        self,
        engine: Engine,
        client: Any,
        config,
        clock: Callable[[], float],
        default_receipt: str = "all",
    ) -> None:
        self.engine = engine
        self.client = client
        self.clock = clock
        self.default_receipt = default_receipt
        self.reconcile_after_s = float(config.get("RECONCILE_AFTER_S") or 900)
        days = config.get("RETENTION_DAYS")
        self.retention = timedelta(days=days) if days else None
        self.pruner: retention.Pruner | None = None
        self._rollups_current = False
        self._next_reconcile = self._next_rollup = self._next_prune = clock()

    def run(self, now: datetime) -> None:
        """Every task that is due; ``now`` is on the database's clock."""
        self.reconcile_stale(now)
        self.refresh_rollups(now)
        self.prune_old()

    def reconcile_stale(self, now: datetime) -> int:
        """Every RECONCILE_INTERVAL, ask the carrier about messages stuck short of a final
        status (a missed receipt is otherwise lost: the carrier does not resend callbacks)."""
        now_m = self.clock()
        if now_m < self._next_reconcile:
            return 0
        self._next_reconcile = now_m + RECONCILE_INTERVAL
        return reconcile.reconcile_stale(
            self.engine,
            self.client,
            after_s=self.reconcile_after_s,
            default_receipt=self.default_receipt,
            now=now,
        )

    def refresh_rollups(self, now: datetime) -> int:
        """Every ROLLUP_INTERVAL, bring the stats rollups up to date (one short transaction)."""
        now_m = self.clock()
        if now_m < self._next_rollup:
            return 0
        self._next_rollup = now_m + ROLLUP_INTERVAL
        with Session(self.engine) as session:
            covered = rollups.refresh(session, now=now)
            session.commit()
        # Fewer new buckets than a pass may cover: this pass reached the present.
        self._rollups_current = covered < rollups.MAX_NEW_BUCKETS
        return covered

    def prune_old(self) -> int:
        """With RETENTION_DAYS, a prune run once a day, one short batch per iteration so that
        sending, renewing the lease and the callbacks all go on meanwhile; rows deleted."""
        if self.retention is None:
            return 0
        if self.pruner is None:
            # Only rows the rollups have counted may go: after a long outage (or on a first
            # start over old data) the rollups catch up first, so one run reaches everything.
            if self.clock() < self._next_prune or not self._rollups_current:
                return 0
            self.pruner = retention.Pruner(self.engine, self.retention)
        deleted = self.pruner.step()
        if self.pruner.done:
            log.info("retention: %s", self.pruner.summary())
            self.pruner = None
            self._next_prune = self.clock() + PRUNE_INTERVAL
        return deleted
