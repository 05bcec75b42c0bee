"""A real PostgreSQL server (Debian ``postgresql``) on 127.0.0.1 for tests and benchmarks.

Its own temporary data directory (``initdb``), a free port, no Unix socket outside that directory,
trust authentication on loopback only; stopped by PID. As root (CI), the server runs as the
``postgres`` system user, which owns the data directory (PostgreSQL refuses to run as root).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (``/usr/lib/postgresql/<N>/bin``), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in ``workdir``; ``url(db)`` gives a connection URL, ``create_database(name)``."""

    def __init__(self, workdir: Path, bin_dir: Path | None = None):
        self.workdir = Path(workdir)
        self.bin_dir = bin_dir or find_bin_dir()
        if self.bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        self.data = self.workdir / "data"
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self._user, "--", *argv] if self._user else argv

    def _chown(self, path: Path) -> None:
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout_s: float = 60.0) -> "PostgresServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._chown(self.workdir)
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(self._as_owner([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "cxr",
                                           "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
                           check=True, capture_output=True)
        log = open(self.workdir / "postgres.log", "ab")
        self.process = subprocess.Popen(
            self._as_owner([str(self.bin_dir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
                            "-p", str(self.port), "-k", str(self.workdir), "-c", "fsync=off",
                            "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                            "-c", "max_connections=200"]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: see {self.workdir / 'postgres.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                ready = subprocess.run([str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                       capture_output=True)
                if ready.returncode == 0:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"postgres did not start in {timeout_s} s: see {self.workdir / 'postgres.log'}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://cxr@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)        # "fast" shutdown
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
