"""The processes of a fleet for tests: `cxr-cds serve` API processes and `cxr-cds worker` processes.

Each is a real subprocess with exactly the given CXR_CDS_* settings, its output in its own log file,
stopped by PID (SIGTERM, or SIGKILL when a test kills it on purpose).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One `python -m cds_hooks <args>` process."""

    def __init__(self, name: str, args: list[str], settings_env: dict[str, str], work: Path):
        self.name, self.args, self.settings_env, self.work = name, args, dict(settings_env), Path(work)
        self.process: subprocess.Popen | None = None
        self.log_path = self.work / f"{name}.log"

    def start(self) -> "Proc":
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_CDS_")}
        env.update(self.settings_env)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "cds_hooks", *self.args], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 40.0) -> None:
        if not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


class Api(Proc):
    """`cxr-cds serve` on a free port; ``url`` once discovery answers."""

    def __init__(self, name: str, settings_env: dict[str, str], work: Path, *, workers: int = 1,
                 port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(name, ["serve", "--port", str(self.port), "--workers", str(workers), "--threads", "8"],
                         settings_env, work)

    def start(self, timeout_s: float = 120.0) -> "Api":
        super().start()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/cds-services", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not answer:\n{self.log()[-3000:]}")


class Worker(Proc):
    """`cxr-cds worker`."""

    def __init__(self, name: str, settings_env: dict[str, str], work: Path, *, concurrency: int = 2):
        self.metrics_port = free_port()
        super().__init__(name, ["worker", "--concurrency", str(concurrency), "--grace", "20",
                                "--metrics-port", str(self.metrics_port)], settings_env, work)


def hanging_server() -> tuple[socket.socket, str]:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers (a PACS that hangs)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s, f"http://127.0.0.1:{s.getsockname()[1]}/dicom-web"
