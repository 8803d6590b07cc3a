"""The shipped nginx configuration, rendered by the shipped script and run by the tests:
``nginx -p PREFIX -c nginx.conf -e stderr -g 'daemon off;'`` in a temporary prefix, in its own
process group, on loopback ports the OS picked."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.servers import ROOT


def free_port() -> int:
    """A loopback port the OS picked (bound, then let go for nginx to bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )
    if found is None:
        raise RuntimeError("nginx is missing: install Debian's 'nginx' package (.ci/run does)")
    return found


def render(env: dict[str, str], output: Path) -> subprocess.CompletedProcess:
    """``python deploy/render_nginx.py --output OUTPUT`` with ``env`` as its environment."""
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "render_nginx.py"), "--output", str(output)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


class Nginx:
    """deploy/nginx.conf in front of ``primary`` (and ``fallback``) upstreams, ``host:port``."""

    def __init__(
        self,
        primary: list[str],
        fallback: list[str] | None = None,
        keep: Path | None = None,
        ports: tuple[int, int] | None = None,
        **settings: str,
    ) -> None:
        self.keep = keep  # where its logs are copied when it stops
        self.prefix = Path(tempfile.mkdtemp(prefix="relay-nginx-"))
        # Run as root (CI), nginx's workers are "nobody" and must reach their temp folders.
        self.prefix.chmod(0o755)
        # The relay's PUBLIC_BASE_URL and FALLBACK_BASE_URL name these: they may be chosen first.
        self.port, self.fallback_port = ports or (free_port(), free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.fallback_url = f"http://127.0.0.1:{self.fallback_port}"
        env = {
            "RELAY_UPSTREAMS": ",".join(primary),
            "RELAY_FALLBACK_UPSTREAMS": ",".join(fallback or primary),
            "NGINX_LISTEN": f"127.0.0.1:{self.port}",
            "NGINX_FALLBACK_LISTEN": f"127.0.0.1:{self.fallback_port}",
            "NGINX_WORKERS": "1",
            **settings,
        }
        self.conf = self.prefix / "nginx.conf"
        done = render(env, self.conf)
        if done.returncode != 0:
            raise RuntimeError(f"render_nginx.py failed: {done.stderr}")
        self.log_path = self.prefix / "nginx.out"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                nginx_binary(),
                "-p",
                str(self.prefix),
                "-c",
                "nginx.conf",
                "-e",
                "stderr",
                "-g",
                "daemon off;",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_listening()

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log_path.read_text(errors='replace')}")
            try:
                for port in (self.port, self.fallback_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx is not listening")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown of master and workers
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self._log.close()
        if self.keep is not None:
            for name in ("access.log", "error.log", "nginx.out"):
                if (self.prefix / name).exists():
                    shutil.copyfile(self.prefix / name, Path(self.keep) / f"nginx-{name}")
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()
