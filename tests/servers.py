"""Real HTTP servers for end-to-end tests: a WSGI app on 127.0.0.1, on a port the OS picks."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from werkzeug.serving import WSGIRequestHandler, make_server


class QuietHandler(WSGIRequestHandler):
    """No access-log line per request (errors are still logged)."""

    def log_request(self, code="-", size="-"):
        pass


class LateApp:
    """A WSGI app whose target is set after the server is bound (the relay's own URL is part
    of its configuration, and the port is only known once the socket exists)."""

    def __init__(self) -> None:
        self.target = None

    def __call__(self, environ, start_response):
        return self.target(environ, start_response)


class ServedApp:
    """Serve a WSGI app over real HTTP in a background thread until ``stop()``."""

    def __init__(self) -> None:
        self.late = LateApp()
        self.server = make_server(
            "127.0.0.1", 0, self.late, threaded=True, request_handler=QuietHandler
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self, app) -> ServedApp:
        self.late.target = app
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@contextmanager
def served_relay(config: dict):
    """The relay built from ``config``, its tables created, served on 127.0.0.1 (port from
    the OS) until the block ends; yields ``(app, port)``."""
    from app import create_app
    from app.extensions import db
    from tests.conftest import close_app

    server = ServedApp()
    app = create_app(config)
    with app.app_context():
        db.create_all()
    server.start(app)
    try:
        yield app, server.server.server_port
    finally:
        server.stop()
        close_app(app)


def raw_request(
    port: int,
    method: str,
    target: bytes,
    headers: list[tuple[str, bytes]] = (),
    body: bytes = b"",
    chunked: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte on a fresh connection (no client library to tidy up
    its header values or URL); returns (status, headers, body) of the answer."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name.encode() + b": " + value for name, value in headers]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    lines.append(b"Connection: close")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + payload)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def relay_env(database_url: str, journal_dir, **extra) -> dict[str, str]:
    """The environment of a relay process: every secret given, development mode, no carrier."""
    from tests.conftest import API_KEY, CALLBACK_PASSWORD, CALLBACK_USER

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GUNICORN_", "CATAPULT_", "DASHBOARD_", "CALLBACK_", "RELAY_"))
        and k
        not in (
            "DATABASE_URL",
            "API_KEYS",
            "DISPATCH",
            "BIND",
            "PORT",
            "WEB_CONCURRENCY",
            "TRUSTED_PROXIES",
            "FORWARDED_ALLOW_IPS",
            "PROMETHEUS_MULTIPROC_DIR",
            "WORKER_METRICS_BIND",
            "LOG_LEVEL",
        )
    }
    env.update(
        RELAY_ENV="development",
        DATABASE_URL=database_url,
        JOURNAL_DIR=str(journal_dir),
        CALLBACK_USERNAME=CALLBACK_USER,
        CALLBACK_PASSWORD=CALLBACK_PASSWORD,
        API_KEYS=API_KEY,
        DASHBOARD_USERNAME="dash",
        DASHBOARD_PASSWORD="dash-pass",
        SECRET_KEY="test-secret",
        PUBLIC_BASE_URL="http://127.0.0.1:9",
        CATAPULT_API_URL="http://127.0.0.1:9",  # discard: nothing listens there
        CATAPULT_USER_ID="u-test",
        CATAPULT_API_TOKEN="t-test",
        CATAPULT_API_SECRET="s-test",
        DISPATCH="off",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Gunicorn:
    """``gunicorn wsgi:app -c gunicorn.conf.py``, as the README starts it, on a loopback socket
    the OS picked (handed over as ``BIND=fd://N``), in its own process group."""

    def __init__(self, env: dict[str, str], log_path, workers: int = 2) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers_wanted = workers
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # "{url}" in a value is this relay's own address (PUBLIC_BASE_URL, ...).
        env = {k: v.replace("{url}", self.url) for k, v in env.items()}
        env.update(BIND=f"fd://{sock.fileno()}", WEB_CONCURRENCY=str(workers))
        self.proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "wsgi:app", "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
            start_new_session=True,
        )
        sock.close()

    def workers(self) -> list[int]:
        """The worker pids (children of the master)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def wait_ready(self, timeout: float = 30.0, workers: int | None = None) -> None:
        """Until every worker is up and ``/healthz`` answers."""
        import requests

        wanted = self.workers_wanted if workers is None else workers
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.proc.returncode}):\n{self.log()}")
            if len(self.workers()) >= wanted:
                try:
                    if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                        time.sleep(0.3)  # the other workers finish their start too
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn not ready after {timeout:.0f} s:\n{self.log()}")

    def log(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self, timeout: float = 30.0) -> int:
        """One SIGTERM to the master (a graceful stop), then wait; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stop()

    def kill(self) -> None:
        """SIGKILL to the whole process group: master and workers die at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


class Dispatcher:
    """``flask --app wsgi dispatch`` (the worker role) in its own process group."""

    def __init__(self, env: dict[str, str], log_path) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "flask"), "--app", "wsgi", "dispatch"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


class SlowSends:
    """WSGI middleware for the sandbox: every send request takes ``seconds`` before it is
    handled, and ``in_flight`` is set while one is being held."""

    def __init__(self, app, seconds: float) -> None:
        self.app, self.seconds = app, seconds
        self.in_flight = threading.Event()

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"].endswith("/messages"):
            self.in_flight.set()
            time.sleep(self.seconds)
            self.in_flight.clear()
        return self.app(environ, start_response)
