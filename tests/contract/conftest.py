"""Contract fixtures: v1 clients nobody here wrote, installed from their registries for this
run, driving a sandbox on loopback over real HTTP.

Each client runs in a child process (``clients/*``) that reads steps as JSON on stdin and
prints what the client returned or raised. An install that cannot reach its registry fails
the tests that need it, loudly: a contract nobody checked must not pass as a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.sandbox.server import SandboxServer
from tests.contract.cases import INSTALL_TIMEOUT, RUN_TIMEOUT

NODE_PACKAGE = ("node-bandwidth", "4.0.0")
# The SDK's own requirements lxml and python-dateutil serve its voice BXML module only;
# ``bandwidth.messaging`` needs six and requests (taken from the project's environment).
PYTHON_PACKAGES = ("bandwidth-sdk==3.1.0", "six==1.17.0")
CLIENTS = Path(__file__).parent / "clients"
PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy"}

Step = tuple[str, Any]


def run_bounded(
    command: list[str], *, timeout: float, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run in a process group of its own; past ``timeout`` the group is killed and reaped."""
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = process.communicate()
            pytest.fail(
                f"{' '.join(command)} did not finish within {timeout:g} s\n{err[-3000:]}",
                pytrace=False,
            )
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def loopback_env(**extra: str) -> dict[str, str]:
    """The environment without proxies: the clients must talk to 127.0.0.1 directly."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def require_tool(name: str) -> str:
    """The tool's path, or a clear failure naming what to install."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"'{name}' is not on PATH: the contract tests need Node.js and npm "
            "(Debian: apt-get install nodejs npm)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def node_bandwidth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``node_modules`` holding node-bandwidth 4.0.0, installed from npm once per test run."""
    require_tool("node")
    npm = require_tool("npm")
    name, version = NODE_PACKAGE
    prefix = tmp_path_factory.mktemp("node-bandwidth")
    result = run_bounded(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"{name}@{version}"],
        timeout=INSTALL_TIMEOUT,
        env={**os.environ, "npm_config_update_notifier": "false"},
    )
    if result.returncode != 0:
        pytest.fail(
            f"npm could not install {name}@{version} (exit {result.returncode}): is the npm "
            f"registry reachable?\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    modules = prefix / "node_modules"
    installed = json.loads((modules / name / "package.json").read_text())["version"]
    assert installed == version, f"npm installed {name} {installed}, not {version}"
    return modules


@pytest.fixture(scope="session")
def python_bandwidth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the python ``bandwidth-sdk`` 3.1.0, apart from the project's packages."""
    target = tmp_path_factory.mktemp("bandwidth-sdk")
    result = run_bounded(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--no-deps",
            "--target",
            str(target),
            *PYTHON_PACKAGES,
        ],
        timeout=INSTALL_TIMEOUT,
    )
    if result.returncode != 0:
        pytest.fail(
            f"pip could not install {' '.join(PYTHON_PACKAGES)} (exit {result.returncode}): "
            f"is PyPI reachable?\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    return target


def run_client(command: list[str], env: dict[str, str], payload: dict[str, Any]) -> list[dict]:
    """One client process: its per-step results, or a failure showing what it printed."""
    result = run_bounded(command, timeout=RUN_TIMEOUT, stdin=json.dumps(payload), env=env)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}\nstdout: {result.stdout[-2000:]}\n"
            f"stderr: {result.stderr[-3000:]}",
            pytrace=False,
        )
    results = json.loads(lines[-1])
    assert len(results) == len(payload["steps"]), results
    return results


Runner = Callable[..., list[dict]]


def runner(command: list[str], env: dict[str, str], names: tuple[str, str, str, str]) -> Runner:
    """``run(sandbox, (op, args), ..., secret=None)``; ``names`` are the client's option names
    for the user id, token, secret and base URL."""

    def run(sandbox: SandboxServer, *steps: Step, secret: str | None = None) -> list[dict]:
        values = (sandbox.user_id, sandbox.token, secret or sandbox.secret, sandbox.url)
        payload = {
            "client": dict(zip(names, values, strict=True)),
            "steps": [{"op": op, "args": args} for op, args in steps],
        }
        return run_client(command, env, payload)

    return run


@pytest.fixture
def node(node_bandwidth: Path) -> Runner:
    """node-bandwidth's results, per step (``clients/node_bandwidth.js``)."""
    return runner(
        [require_tool("node"), str(CLIENTS / "node_bandwidth.js")],
        loopback_env(NODE_PATH=str(node_bandwidth)),
        ("userId", "apiToken", "apiSecret", "baseUrl"),
    )


@pytest.fixture
def python_sdk(python_bandwidth: Path) -> Runner:
    """bandwidth-sdk's results, per step (``clients/python_bandwidth.py``)."""
    return runner(
        [sys.executable, str(CLIENTS / "python_bandwidth.py")],
        loopback_env(PYTHONPATH=str(python_bandwidth)),
        ("user_id", "api_token", "api_secret", "api_endpoint"),
    )


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """Start sandboxes on 127.0.0.1:0 (perfect scenario, fast events); all stopped after."""
    started: list[SandboxServer] = []

    def make(**options: Any) -> SandboxServer:
        settings = {"scenario": "perfect", "seed": 11, "delay_min_ms": 0, "delay_max_ms": 5}
        server = SandboxServer("127.0.0.1", 0, **{**settings, **options}).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., SandboxServer]) -> SandboxServer:
    """A sandbox without limits."""
    return make_sandbox()
