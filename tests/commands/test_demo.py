"""`cxr-cds demo` (what `make demo` runs): it serves, and the request it prints returns a card."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from cds_hooks.commands.demo import DEMO_ACCESSION, ORDER_SIGN_SERVICE_ID, prepare


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo_server(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_CDS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cds_hooks", "demo", "--port", str(port), "--home", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        curl = None
        for line in proc.stdout:            # the demo prints its curl command before it serves
            if line.strip().startswith("curl -s -X POST"):
                curl = line.strip()
                break
        assert curl, "the demo printed no curl command"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"demo exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if requests.get(f"{base}/cds-services", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or the worker still loading
                time.sleep(0.5)
        else:
            pytest.fail("the demo did not answer /cds-services within 180 s")
        yield base, curl, tmp_path / "demo"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_demo_serves_and_its_printed_curl_returns_a_card(demo_server):
    base, curl, home = demo_server
    services = requests.get(f"{base}/cds-services", timeout=5).json()["services"]
    assert ORDER_SIGN_SERVICE_ID in {s["id"] for s in services}

    # run the printed command as a person would paste it (curl ... | python3 -m json.tool)
    shown = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=120, check=True)

    cards = json.loads(shown.stdout)["cards"]
    assert len(cards) == 1
    card = cards[0]
    assert "AI" in card["summary"] and len(card["summary"]) <= 139
    assert "AI-generated draft" in card["detail"]
    action = card["suggestions"][0]["actions"][0]
    assert action["type"] == "create"
    report = action["resource"]
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["identifier"][0]["value"] == DEMO_ACCESSION
    assert "random weights" in json.dumps(report).lower()  # the demo model names itself


def test_prepare_is_idempotent_and_prints_nothing_identifying(tmp_path):
    first = prepare(tmp_path)
    files = sorted(p.name for p in first["studies"].iterdir())
    second = prepare(tmp_path)
    assert first == second
    assert sorted(p.name for p in second["studies"].iterdir()) == files == ["LL.dcm", "PA.dcm"]
    request = json.loads(first["request"].read_text())
    assert request["hook"] == "order-sign"
    assert re.fullmatch(r"[0-9a-f-]{36}", request["hookInstance"])
