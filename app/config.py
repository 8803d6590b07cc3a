"""Settings from the environment, read and validated once when the app is created."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .proxies import DEFAULT_ALLOW, parse_allow_list

DEFAULT_CATAPULT_API_URL = "https://api.catapult.inetwork.com"


class ConfigError(RuntimeError):
    """A required setting is missing or malformed; the message names every variable."""


@dataclass
class Settings:
    """The relay's configuration, as Flask config keys with the environment variable names."""

    values: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    generated: dict = field(default_factory=dict)


def _url_ok(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _int(env, name, default, errors, minimum=0, maximum=None):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        errors.append(f"{name} must be an integer, got {raw!r}")
        return default
    if value < minimum or (maximum is not None and value > maximum):
        errors.append(f"{name} must be between {minimum} and {maximum or 'any'}, got {value}")
    return value


DEFAULT_WEBHOOK_RETRY_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def _schedule(env, name, errors) -> tuple[int, ...]:
    """Seconds before each attempt of a notification, comma-separated (the first usually 0):
    its length is the number of attempts before a delivery is marked failed."""
    raw = env.get(name)
    if raw in (None, ""):
        return DEFAULT_WEBHOOK_RETRY_SCHEDULE
    parts = [p.strip() for p in raw.split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts) or len(parts) > 100:
        errors.append(
            f"{name} must be up to 100 whole numbers of seconds, comma-separated, got {raw!r}"
        )
        return DEFAULT_WEBHOOK_RETRY_SCHEDULE
    return tuple(int(p) for p in parts)


def _flag(env, name, errors) -> bool:
    raw = (env.get(name) or "0").strip().lower()
    if raw not in ("0", "1", "true", "false"):
        errors.append(f"{name} must be 1 or 0, got {raw!r}")
    return raw in ("1", "true")


def _float(env, name, default, errors):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        errors.append(f"{name} must be a number, got {raw!r}")
        return default
    if value < 0:
        errors.append(f"{name} must not be negative, got {raw!r}")
    return value


def _bind(env, name, errors) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        errors.append(f"{name} must be host:port (or :port), got {raw!r}")
        return None
    return raw


SECRET_NAMES = (
    "API_KEYS",
    "CALLBACK_USERNAME",
    "CALLBACK_PASSWORD",
    "CATAPULT_USER_ID",
    "CATAPULT_API_TOKEN",
    "CATAPULT_API_SECRET",
    "DASHBOARD_USERNAME",
    "DASHBOARD_PASSWORD",
    "SECRET_KEY",
)


def development_secrets(instance: Path) -> tuple[dict[str, str], bool]:
    """Generated secrets for local runs, kept in ``instance/dev-secrets.json`` so that every
    process (each gunicorn worker builds its own app) and every restart agrees on them.
    Returns them and whether this call created the file."""
    path = instance / "dev-secrets.json"
    if path.exists():
        return json.loads(path.read_text()), False
    instance.mkdir(parents=True, exist_ok=True)
    values = {name: secrets.token_urlsafe(16) for name in SECRET_NAMES}
    tmp = instance / f".dev-secrets.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle)
    try:
        os.link(tmp, path)  # atomic: the first process to get here wins, the others read it
        created = True
    except FileExistsError:
        values, created = json.loads(path.read_text()), False
    finally:
        tmp.unlink()
    return values, created


def load_settings(env: dict | None = None, instance_path: str | None = None) -> Settings:
    """Read every setting of DESIGN.md from ``env``; collect (not raise) what is wrong."""
    env = dict(os.environ if env is None else env)
    errors: list[str] = []
    generated: dict[str, str] = {}
    relay_env = env.get("RELAY_ENV", "production") or "production"
    if relay_env not in ("production", "development", "testing"):
        errors.append(f"RELAY_ENV must be production or development, got {relay_env!r}")
    strict = relay_env == "production"
    instance = Path(instance_path or "instance")
    stored: dict[str, str] = {}
    if relay_env == "development" and not all(env.get(name) for name in SECRET_NAMES):
        stored, created = development_secrets(instance)
        if created:
            generated.update(stored)

    def secret(name: str) -> str:
        value = env.get(name) or ""
        if value:
            return value
        if strict:
            errors.append(f"{name} is required (RELAY_ENV=production)")
            return ""
        if name in stored:
            return stored[name]
        # Testing: a throwaway value for this process only.
        value = secrets.token_urlsafe(16)
        generated[name] = value
        return value

    database_url = env.get("DATABASE_URL") or f"sqlite:///{(instance / 'relay.sqlite3').resolve()}"

    public = env.get("PUBLIC_BASE_URL") or ("" if strict else "http://127.0.0.1:8000")
    if not public:
        errors.append("PUBLIC_BASE_URL is required (RELAY_ENV=production)")
    elif not _url_ok(public):
        errors.append(f"PUBLIC_BASE_URL must be an http(s) URL, got {public!r}")
    fallback = env.get("FALLBACK_BASE_URL") or public
    if env.get("FALLBACK_BASE_URL") and not _url_ok(fallback):
        errors.append(f"FALLBACK_BASE_URL must be an http(s) URL, got {fallback!r}")
    api_url = env.get("CATAPULT_API_URL") or DEFAULT_CATAPULT_API_URL
    if not _url_ok(api_url):
        errors.append(f"CATAPULT_API_URL must be an http(s) URL, got {api_url!r}")

    receipt = (env.get("RECEIPT_REQUESTED") or "all").lower()
    if receipt not in ("none", "all", "error"):
        errors.append(f"RECEIPT_REQUESTED must be none, all or error, got {receipt!r}")
    dispatch = (env.get("DISPATCH") or "inline").lower()
    if dispatch not in ("inline", "worker", "off"):
        errors.append(f"DISPATCH must be inline, worker or off, got {dispatch!r}")

    allow_raw = env.get("FORWARDED_ALLOW_IPS")
    try:
        forwarded_allow = parse_allow_list(DEFAULT_ALLOW if allow_raw is None else allow_raw)
    except ValueError as exc:
        errors.append(f"FORWARDED_ALLOW_IPS must list IP addresses, networks or *: {exc}")
        forwarded_allow = []

    api_keys_raw = env.get("API_KEYS") or ""
    api_keys = [k.strip() for k in api_keys_raw.split(",") if k.strip()]
    if not api_keys:
        if strict:
            errors.append("API_KEYS is required (RELAY_ENV=production)")
        else:
            api_keys = [secret("API_KEYS")]

    values = {
        "RELAY_ENV": relay_env,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "DATABASE_URL": database_url,
        "PUBLIC_BASE_URL": public.rstrip("/"),
        "FALLBACK_BASE_URL": (fallback or "").rstrip("/"),
        "CALLBACK_USERNAME": secret("CALLBACK_USERNAME"),
        "CALLBACK_PASSWORD": secret("CALLBACK_PASSWORD"),
        "CATAPULT_API_URL": api_url.rstrip("/"),
        "CATAPULT_USER_ID": secret("CATAPULT_USER_ID"),
        "CATAPULT_API_TOKEN": secret("CATAPULT_API_TOKEN"),
        "CATAPULT_API_SECRET": secret("CATAPULT_API_SECRET"),
        "CATAPULT_MPS": _float(env, "CATAPULT_MPS", 0.0, errors),
        "CATAPULT_MPS_PER_NUMBER": _float(env, "CATAPULT_MPS_PER_NUMBER", 0.0, errors),
        "RECEIPT_REQUESTED": receipt,
        "CALLBACK_TIMEOUT_MS": _int(env, "CALLBACK_TIMEOUT_MS", 10000, errors, 1, 10000),
        "API_KEYS": api_keys,
        "DASHBOARD_USERNAME": secret("DASHBOARD_USERNAME"),
        "DASHBOARD_PASSWORD": secret("DASHBOARD_PASSWORD"),
        "DISPATCH": dispatch,
        "SECRET_KEY": secret("SECRET_KEY"),
        # Seconds a message may stay short of a final status before the reconciler asks.
        "RECONCILE_AFTER_S": _int(env, "RECONCILE_AFTER_S", 900, errors, 1),
        # Days of history kept: the worker role prunes older rows daily (empty: keep all).
        "RETENTION_DAYS": _int(env, "RETENTION_DAYS", None, errors, 1),
        "CARRIER_TIMEOUT_S": _float(env, "CARRIER_TIMEOUT_S", 15.0, errors),
        # Callbacks the database cannot take wait here, durably: a persistent volume.
        "JOURNAL_DIR": str(Path(env.get("JOURNAL_DIR") or instance / "journal").resolve()),
        # How long a callback waits for its commit before it goes to the journal instead.
        "CALLBACK_DB_BUDGET_MS": _int(env, "CALLBACK_DB_BUDGET_MS", 2000, errors, 1, 8000),
        # Bodies larger than these are refused (413) unread: a Catapult callback is a few KB;
        # a batch of 50 messages of 2048 characters, JSON-escaped, some hundreds of KB.
        "MAX_BODY_BYTES": _int(env, "MAX_BODY_BYTES", 1 << 20, errors, 1024),
        "CALLBACK_MAX_BODY_BYTES": _int(env, "CALLBACK_MAX_BODY_BYTES", 64 << 10, errors, 1024),
        # Onward notifications: the seconds before each attempt, and whether endpoints may be
        # on loopback or private addresses (tests and local runs only: SSRF otherwise).
        "WEBHOOK_RETRY_SCHEDULE": _schedule(env, "WEBHOOK_RETRY_SCHEDULE", errors),
        "WEBHOOK_ALLOW_PRIVATE": _flag(env, "WEBHOOK_ALLOW_PRIVATE", errors),
        # Proxy hops whose X-Forwarded-* are believed, from the peers of FORWARDED_ALLOW_IPS
        # only (app/proxies.py; gunicorn.conf.py gives gunicorn the same list).
        "TRUSTED_PROXIES": _int(env, "TRUSTED_PROXIES", 1, errors, 0, 10),
        "FORWARDED_ALLOW_IPS": forwarded_allow,
        # The worker role's Prometheus endpoint, host:port (empty: none).
        "WORKER_METRICS_BIND": _bind(env, "WORKER_METRICS_BIND", errors),
    }
    return Settings(values=values, errors=errors, generated=generated)
