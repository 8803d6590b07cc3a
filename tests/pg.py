"""A throwaway PostgreSQL server for the test session (real server, loopback only).

``RELAY_TEST_POSTGRES_URL`` points the tests at a server someone else started (CI does, via
``.ci/postgres``); otherwise a cluster is created in a temporary folder with the server binaries
of Debian's ``postgresql`` package and removed at the end of the session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg


def _binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TempCluster:
    """initdb + pg_ctl in a temporary folder, as the ``postgres`` user when run as root."""

    def __init__(self) -> None:
        bindir = _binaries()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries are missing: install Debian's 'postgresql' package "
                "(apt-get install postgresql) or set RELAY_TEST_POSTGRES_URL"
            )
        self.bindir = bindir
        self.folder = tempfile.mkdtemp(prefix="relay-pg-")
        self.data = os.path.join(self.folder, "data")
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.user = "postgres" if self.as_user else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        self._run(
            f"{self.bindir}/initdb", "-D", self.data, "-A", "trust", "-U", self.user, "--no-sync"
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        # The same options on every later start (``resume``) as on this one.
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write("\n" + "\n".join(_conf_lines(options)) + "\n")
        self._run(
            f"{self.bindir}/pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-w",
            "-l",
            os.path.join(self.folder, "log"),
            "start",
        )
        url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("CREATE DATABASE relay_test")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/relay_test"

    def stop(self) -> None:
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):  # not halted
                self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def halt(self) -> None:
        """Stop the server as a crash would (``immediate``), keeping its data: an outage."""
        self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        """Start the halted server again on the same port (crash recovery included)."""
        self._run(
            f"{self.bindir}/pg_ctl",
            "-D",
            self.data,
            "-w",
            "-l",
            os.path.join(self.folder, "log"),
            "start",
        )


def _conf_lines(options: str) -> list[str]:
    """``-c name=value``/``-p``/``-k`` command-line options as postgresql.conf lines."""
    words, lines = options.split(), []
    names = {"-p": "port", "-k": "unix_socket_directories"}
    for flag, value in zip(words[::2], words[1::2], strict=True):
        name, _, setting = value.partition("=") if flag == "-c" else (names[flag], "", value)
        lines.append(f"{name} = '{setting}'")
    return lines


def plain_url(sqlalchemy_url: str) -> str:
    """The libpq form of a ``postgresql+psycopg://`` URL."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def create_schema(base_url: str, name: str) -> str:
    """A fresh schema for one test; the returned URL makes it the connection's search path."""
    with psycopg.connect(plain_url(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return f"{base_url}?options=-csearch_path%3D{name}"


def drop_schema(base_url: str, name: str) -> None:
    with psycopg.connect(plain_url(base_url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
