"""`cxr-cds serve` (a real gunicorn, one worker process) on loopback for tests, stopped by its PID."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(settings_env: dict[str, str], work: Path, *, port: int | None = None,
           threads: int = 4) -> Iterator[str]:
    """Run `python -m cds_hooks serve` with exactly ``settings_env`` as its CXR_CDS_* variables.

    Yields the base URL once discovery answers 200 (the worker has loaded the model); the server's
    output goes to ``work/serve.log`` and is shown when it fails to start.
    """
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_CDS_")}
    env.update(settings_env)
    log_path = work / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cds_hooks", "serve", "--port", str(port),
                                 "--threads", str(threads)], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                if proc.poll() is not None:
                    pytest.fail("cxr-cds serve exited:\n" + log_path.read_text()[-3000:])
                try:
                    if requests.get(f"{url}/cds-services", timeout=2).status_code == 200:
                        break
                except requests.RequestException:   # refused, or accepted while the worker loads the model
                    time.sleep(0.25)
            else:
                pytest.fail("cxr-cds serve did not answer:\n" + log_path.read_text()[-3000:])
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
