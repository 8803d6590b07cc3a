"""Processes the benchmarks own: gunicorn (relay or bare app) and the sandbox.

Each one runs in its own process group on loopback and is stopped with one SIGTERM (then
SIGKILL to the group if it hangs). Every started process is registered so that ``stop_all``
(called from ``__main__`` on any exit) leaves nothing running.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKERS = 2

_running: list[ManagedProcess] = []


class BenchError(RuntimeError):
    """A benchmark cannot run (missing tool, a server that did not start)."""


@dataclass
class Credentials:
    """Fresh secrets for one benchmark run."""

    callback_user: str = "bench-carrier"
    callback_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    dashboard_user: str = "bench-admin"
    dashboard_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))

    def basic(self, user: str, password: str) -> str:
        import base64

        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    @property
    def callback_auth(self) -> str:
        return self.basic(self.callback_user, self.callback_password)

    @property
    def dashboard_auth(self) -> str:
        return self.basic(self.dashboard_user, self.dashboard_password)

    @property
    def api_auth(self) -> str:
        return f"Bearer {self.api_key}"


def base_env() -> dict[str, str]:
    """The parent environment without anything that would change gunicorn's or the relay's
    settings behind the benchmark's back."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GUNICORN_", "CATAPULT_", "DASHBOARD_", "CALLBACK_"))
        and k
        not in (
            "WEB_CONCURRENCY",
            "DATABASE_URL",
            "API_KEYS",
            "DISPATCH",
            "BIND",
            "PORT",
            "RELAY_ENV",
            "SECRET_KEY",
            "PUBLIC_BASE_URL",
            "FALLBACK_BASE_URL",
            "FLASK_APP",
        )
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def relay_env(
    database: Path, creds: Credentials, public_url: str = "http://127.0.0.1:9", **extra: str
) -> dict[str, str]:
    """Everything the relay needs (RELAY_ENV=development, no inline dispatcher)."""
    return {
        **base_env(),
        "RELAY_ENV": "development",
        "DATABASE_URL": f"sqlite:///{database}",
        "CALLBACK_USERNAME": creds.callback_user,
        "CALLBACK_PASSWORD": creds.callback_password,
        "API_KEYS": creds.api_key,
        "DASHBOARD_USERNAME": creds.dashboard_user,
        "DASHBOARD_PASSWORD": creds.dashboard_password,
        "SECRET_KEY": secrets.token_urlsafe(16),
        "DISPATCH": "off",
        "PUBLIC_BASE_URL": public_url,
        # Nothing listens on port 9 (discard): nothing here talks to the carrier anyway.
        "CATAPULT_API_URL": "http://127.0.0.1:9",
        "CATAPULT_USER_ID": "u-bench",
        "CATAPULT_API_TOKEN": "t-bench",
        "CATAPULT_API_SECRET": "s-bench",
        "CATAPULT_MPS": "0",
        # Beside the database, not in the repository's instance/ folder.
        "JOURNAL_DIR": str(database.parent / f"journal-{database.stem}"),
        **extra,
    }


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """``os.environ`` as ``values`` for the app factory, restored afterwards."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class ManagedProcess:
    """A child in its own process group, its output in ``log``."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log: Path,
        cwd: Path,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.log = log
        self._log_handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,
        )
        _running.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 25.0) -> None:
        """One SIGTERM to the process (gunicorn's master stops its workers), then wait."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_handle.close()
        if self in _running:
            _running.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def stop_all() -> None:
    """Stop every process still running (called on any exit of the benchmark)."""
    for process in list(reversed(_running)):
        try:
            process.stop(timeout=10)
        except Exception as exc:  # keep stopping the others
            print(f"bench: could not stop {process.name}: {exc}", file=sys.stderr)


# How a benchmark runs gunicorn: "config" is the relay's own gunicorn.conf.py (as the README
# starts it); "sync" and "gthread" are explicit flags with the same worker count, timeouts and
# keep-alive, for the baselines.
MODES = ("config", "sync", "gthread")
GTHREAD_THREADS = 16  # the same thread count as gunicorn.conf.py's default


class Gunicorn(ManagedProcess):
    """``gunicorn APP`` on a loopback socket the OS picked, handed over as ``fd://``: with the
    project's gunicorn.conf.py (``mode="config"``) or with explicit flags (no config file)."""

    def __init__(
        self,
        name: str,
        app: str,
        env: dict[str, str],
        workdir: Path,
        sock: socket.socket | None = None,
        mode: str = "sync",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown gunicorn mode {mode!r}")
        self.sock = sock or listen_socket()
        self.port = self.sock.getsockname()[1]
        self.mode = mode
        fd = self.sock.fileno()
        args = [str(BIN / "gunicorn"), app]
        if mode == "config":
            env = {**env, "BIND": f"fd://{fd}", "WEB_CONCURRENCY": str(WORKERS)}
            args += ["--config", str(ROOT / "gunicorn.conf.py"), "--log-level", "warning"]
        else:
            args += [
                "--bind",
                f"fd://{fd}",
                "--workers",
                str(WORKERS),
                "--worker-class",
                mode,
                *(["--threads", str(GTHREAD_THREADS)] if mode == "gthread" else []),
                "--timeout",
                "30",
                "--graceful-timeout",
                "20",
                "--keep-alive",
                "5",
                "--no-control-socket",
                "--error-logfile",
                "-",
                "--log-level",
                "warning",
            ]
        args += ["--chdir", str(ROOT)]
        # cwd is the work folder, so gunicorn does not pick up ./gunicorn.conf.py on its own.
        super().__init__(name, args, env, workdir / f"{name}.log", workdir, pass_fds=(fd,))
        self.sock.close()

    @property
    def description(self) -> str:
        """How this server runs, for the tables."""
        if self.mode == "config":
            return "gunicorn.conf.py"
        threads = f" --threads {GTHREAD_THREADS}" if self.mode == "gthread" else ""
        return f"-w {WORKERS} {self.mode}{threads}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout: float = 30.0) -> None:
        """Until an answer (any status) comes back on ``path`` from every worker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name} exited during startup:\n{self.log_tail()}")
            if len(self.workers()) >= WORKERS:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                    conn.request("GET", path)
                    conn.getresponse().read()
                    conn.close()
                    return
                except OSError:
                    pass
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def workers(self) -> list[int]:
        """The worker pids (children of the master)."""
        return children(self.pid)


def listen_socket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a port the OS picked (gunicorn calls listen)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except OSError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by ``pids`` (from /proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def memory_mb(pid: int) -> dict[str, float | None]:
    """VmRSS (now) and VmHWM (peak) of ``pid`` in MB, from /proc/<pid>/status."""
    values: dict[str, float | None] = {"rss_mb": None, "peak_mb": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                values["rss_mb"] = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("VmHWM:"):
                values["peak_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return values


def flask_command(
    database: Path, *args: str, timeout: float = 120, database_url: str | None = None
) -> str:
    """``flask --app wsgi <args>`` on ``database`` (or ``database_url``); its output, or
    BenchError."""
    extra = {"DATABASE_URL": database_url} if database_url else {}
    result = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", *args],
        env=relay_env(database, Credentials(), **extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise BenchError(f"flask {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def migrate(database: Path, database_url: str | None = None) -> None:
    """``flask --app wsgi db upgrade`` on a fresh SQLite file, or on ``database_url`` (the real
    migrations)."""
    flask_command(database, "db", "upgrade", database_url=database_url)
