"""The sandbox's settings: account credentials, scenario, seed, rate limits and knobs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .scenarios import KNOB_NAMES, Knobs, resolve_knobs

DEFAULT_USER_ID = "u-sandbox"
DEFAULT_TOKEN = "sandbox-token"
DEFAULT_SECRET = "sandbox-secret"
# Other spellings accepted for knobs.
KNOB_ALIASES = {"outage_share": "primary_outage_share", "early_event_share": "early_share"}


@dataclass(frozen=True)
class SandboxOptions:
    """Everything ``create_sandbox_app(**options)`` accepts, resolved."""

    user_id: str = DEFAULT_USER_ID
    token: str = DEFAULT_TOKEN
    secret: str = DEFAULT_SECRET
    scenario: str = "realistic"
    seed: int = 0
    mps: float = 0.0  # 0 = no rate limit
    mps_per_number: float | None = None  # None = same as mps
    reads_per_second: int = 0  # GET message / list per account; over it: 429 (0 = no limit)
    workers: int = 12
    public_url: str | None = None  # base of Location / messageUri; default: the request's host
    early_wait_ms: int = 2000  # how long a send response may wait for its early events
    knobs: Knobs = field(default_factory=Knobs)

    @classmethod
    def build(cls, **options: Any) -> SandboxOptions:
        """From keyword options; knob names (``failure_share=...``) override the scenario."""
        for alias, name in KNOB_ALIASES.items():
            if alias in options:
                options.setdefault(name, options.pop(alias))
        knob_overrides = {k: options.pop(k) for k in list(options) if k in KNOB_NAMES}
        unknown = set(options) - {f for f in cls.__dataclass_fields__ if f != "knobs"}
        if unknown:
            raise TypeError(f"unknown sandbox option(s): {', '.join(sorted(unknown))}")
        options = {k: v for k, v in options.items() if v is not None}
        scenario = options.get("scenario", cls.scenario)
        if "seed" not in options:
            options["seed"] = random.SystemRandom().randrange(2**31)
        if options.get("mps", 0) < 0 or (options.get("mps_per_number") or 0) < 0:
            raise ValueError("mps must not be negative")
        if options.get("reads_per_second", 0) < 0:
            raise ValueError("reads_per_second must not be negative")
        if options.get("workers", cls.workers) < 1:
            raise ValueError("workers must be at least 1")
        public_url = options.get("public_url")
        if public_url:
            options["public_url"] = public_url.rstrip("/")
        return cls(knobs=resolve_knobs(scenario, knob_overrides), **options)

    def describe(self) -> dict[str, Any]:
        """Introspection view (no secret)."""
        return {
            "userId": self.user_id,
            "scenario": self.scenario,
            "seed": self.seed,
            "mps": self.mps,
            "mpsPerNumber": self.mps if self.mps_per_number is None else self.mps_per_number,
            "readsPerSecond": self.reads_per_second,
            "workers": self.workers,
            "publicUrl": self.public_url,
            "earlyWaitMs": self.early_wait_ms,
            "knobs": self.knobs.to_dict(),
        }
