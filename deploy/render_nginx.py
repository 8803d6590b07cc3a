"""Render deploy/nginx.conf from the environment: ``python deploy/render_nginx.py > nginx.conf``.

Every double-braced name in the template is an environment variable below (or a list made
from one); a name the template uses and this script does not know is an error, as is a value
that could break out of its directive. ``--probe`` asks every instance's ``/readyz`` first and
marks the ones that do not answer 200 ``down``: open-source nginx only checks instances
passively, so running this from a timer (then ``nginx -s reload``) makes ``/readyz`` an active
check. It never marks a whole pool down (nginx would then refuse every request: better to
keep trying them).

Environment (defaults in brackets):
  RELAY_UPSTREAMS             host:port of each relay instance, comma-separated (required)
  RELAY_FALLBACK_UPSTREAMS    the pool FALLBACK_BASE_URL reaches [RELAY_UPSTREAMS]
  NGINX_LISTEN                the PUBLIC_BASE_URL listener [8080]
  NGINX_FALLBACK_LISTEN       the FALLBACK_BASE_URL listener [8081]
  NGINX_SERVER_NAME, NGINX_FALLBACK_SERVER_NAME  [_]
  MAX_BODY_BYTES, CALLBACK_MAX_BODY_BYTES   the relay's own limits [1048576, 65536]
  UPSTREAM_MAX_FAILS, UPSTREAM_FAIL_TIMEOUT failures that take an instance out, and for how
                              long [1, 5s]
  NGINX_WORKERS [auto], NGINX_ACCESS_LOG [access.log], NGINX_ERROR_LOG [error.log]
  NGINX_ERROR_LEVEL           [crit]: lower levels quote request lines, and with them the
                              query strings of GET callbacks (phone numbers, text)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import urllib.request
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Z0-9_]+)\s*\}\}")
# What may stand in a directive's argument: no whitespace, quotes, braces or semicolons.
SAFE = re.compile(r"[A-Za-z0-9_.:/\[\]*@=-]+\Z")
DEFAULTS = {
    "NGINX_LISTEN": "8080",
    "NGINX_FALLBACK_LISTEN": "8081",
    "NGINX_SERVER_NAME": "_",
    "NGINX_FALLBACK_SERVER_NAME": "_",
    "MAX_BODY_BYTES": str(1 << 20),
    "CALLBACK_MAX_BODY_BYTES": str(64 << 10),
    "UPSTREAM_MAX_FAILS": "1",
    "UPSTREAM_FAIL_TIMEOUT": "5s",
    "NGINX_WORKERS": "auto",
    "NGINX_ACCESS_LOG": "access.log",
    "NGINX_ERROR_LOG": "error.log",
    "NGINX_ERROR_LEVEL": "crit",
}


class RenderError(ValueError):
    """A missing or unusable setting; the message names it."""


def _value(env: dict, name: str) -> str:
    value = (env.get(name) or DEFAULTS.get(name) or "").strip()
    if not value:
        raise RenderError(f"{name} is required")
    if not SAFE.match(value):
        raise RenderError(f"{name} has characters nginx would not read as one value: {value!r}")
    return value


def _instances(env: dict, name: str) -> list[str]:
    raw = env.get(name) or ""
    instances = [item.strip() for item in raw.split(",") if item.strip()]
    if not instances:
        raise RenderError(f"{name} must list the relay instances (host:port, comma-separated)")
    for item in instances:
        if not SAFE.match(item) or not (item.startswith("unix:") or ":" in item):
            raise RenderError(f"{name}: {item!r} is not host:port (or unix:/path)")
    return instances


def ready(instance: str, timeout: float = 1.0) -> bool:
    """Whether ``instance``'s ``/readyz`` answers 200 within ``timeout`` seconds."""
    if instance.startswith("unix:"):
        return True  # urllib cannot ask a UNIX socket: leave it to the passive checks
    try:
        with urllib.request.urlopen(f"http://{instance}/readyz", timeout=timeout) as answer:
            return answer.status == 200
    except OSError:  # refused, timed out, or an HTTP error status
        return False


def servers(instances: list[str], env: dict, probe: bool) -> str:
    """The ``server`` lines of an upstream block."""
    fails = _value(env, "UPSTREAM_MAX_FAILS")
    timeout = _value(env, "UPSTREAM_FAIL_TIMEOUT")
    down = set()
    if probe:
        down = {i for i in instances if not ready(i)}
        if down == set(instances):
            print("render_nginx: no instance is ready; leaving them all in", file=sys.stderr)
            down = set()
    lines = []
    for instance in instances:
        mark = " down" if instance in down else ""
        lines.append(f"server {instance} max_fails={fails} fail_timeout={timeout}{mark};")
    return "\n        ".join(lines)


def render(env: dict | None = None, template: Path = TEMPLATE, probe: bool = False) -> str:
    """The configuration for ``env`` (default: this process's environment)."""
    env = dict(os.environ if env is None else env)
    primary = _instances(env, "RELAY_UPSTREAMS")
    fallback = (
        _instances(env, "RELAY_FALLBACK_UPSTREAMS")
        if env.get("RELAY_FALLBACK_UPSTREAMS")
        else primary
    )
    for name in ("MAX_BODY_BYTES", "CALLBACK_MAX_BODY_BYTES", "UPSTREAM_MAX_FAILS"):
        if not _value(env, name).isdigit():
            raise RenderError(f"{name} must be a whole number, got {_value(env, name)!r}")
    computed = {
        "PRIMARY_SERVERS": servers(primary, env, probe),
        "FALLBACK_SERVERS": servers(fallback, env, probe),
    }

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name in computed:
            return computed[name]
        if name not in DEFAULTS:
            raise RenderError(f"the template names {name}, which this script does not know")
        return _value(env, name)

    return PLACEHOLDER.sub(fill, template.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--output", type=Path, help="write here instead of standard output")
    parser.add_argument("--probe", action="store_true", help="mark unready instances down")
    args = parser.parse_args(argv)
    try:
        text = render(template=args.template, probe=args.probe)
    except RenderError as exc:
        print(f"render_nginx: {exc}", file=sys.stderr)
        return 2
    if args.output:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.output)  # nginx -s reload never reads half a file
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
