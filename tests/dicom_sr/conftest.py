"""Fixtures for the dicom_sr tests: a synthetic radiograph, an analysis of it, dciodvfy, a STOW stand-in."""
from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from pydicom.dataset import Dataset

from imaging import read_radiograph
from prompts import extract_findings
from tests.support import synthetic_cxr as syn

REPORT = ("There is a small left pleural effusion. Moderate cardiomegaly. No pneumothorax. "
          "Possible right lower lobe consolidation.")
MODEL = {"name": "ECOFRI/CXR-LLAVA-v2", "revision": "0123abcd", "dtype": "bfloat16", "quantization": "4bit",
         "prompt_id": "report_context", "prompt_version": "v1", "scores_prompt": "finding_question.v1"}
SCORES = {"atelectasis": 0.0712, "cardiomegaly": 0.8811, "consolidation": 0.4, "edema": 0.05,
          "pleural_effusion": 0.9, "pneumothorax": 0.0301}


def analysis_json(ds: Dataset, tmp_path: Path, *, report: str = REPORT, scores: dict | None = SCORES,
                  analysis_id: str = "3f1c9a52-0d7e-4d5b-9b7c-2c1e7a0e9f10", model: dict | None = None) -> dict:
    """A stored analysis of ``ds`` in the shape ``cds_hooks.pipeline.Analysis.to_json()`` gives."""
    image = read_radiograph(syn.write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))
    return {
        "analysis_id": analysis_id,
        "report": report,
        "findings": extract_findings(report).to_json(),
        "study": image.study_json(),
        "model": dict(model or MODEL),
        "scores": scores,
        "created": datetime(2026, 11, 28, 9, 45, 12, tzinfo=timezone.utc).isoformat(),
    }


@pytest.fixture
def cxr() -> Dataset:
    return syn.make_cxr(view="PA", accession="ACC-SR-1")


@pytest.fixture
def analysis(cxr, tmp_path) -> dict:
    return analysis_json(cxr, tmp_path)


@pytest.fixture(scope="session")
def dciodvfy():
    """``dciodvfy(path) -> list of error lines`` (Debian dicom3tools; `make test` installs it)."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        from tests.conftest import _missing

        _missing("dciodvfy (Debian package dicom3tools)")

    def run(path: Path) -> tuple[list[str], str]:
        proc = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
        output = proc.stdout + proc.stderr
        return [line for line in output.splitlines() if line.startswith("Error")], output

    return run


class StowStandIn:
    """A hand-written STOW-RS endpoint on loopback, for what Orthanc cannot be made to answer on purpose.

    It answers POSTs with the scripted ``(status, body, content_type)`` responses in order; once they
    are used up it forwards each request to ``forward_to`` (a real Orthanc's DICOMweb root), or
    answers 500 when there is none. GETs are always forwarded (WADO-RS metadata, QIDO-RS).
    """

    def __init__(self, responses: list[tuple[int, bytes, str | None]], forward_to: str | None = None) -> None:
        self.responses = list(responses)
        self.forward_to = forward_to
        self.posts: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self, method: str, body: bytes | None) -> None:
                if stand_in.forward_to is None:
                    self._answer(500, b"", None)
                    return
                upstream = stand_in.forward_to + self.path[len("/dicom-web"):]
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = requests.request(method, upstream, data=body, headers=headers, timeout=30)
                self._answer(r.status_code, r.content, r.headers.get("Content-Type"))

            def _answer(self, status: int, body: bytes, content_type: str | None) -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                stand_in.posts.append(self.path)
                if stand_in.responses:
                    self._answer(*stand_in.responses.pop(0))
                else:
                    self._forward("POST", body)

            def do_GET(self) -> None:  # noqa: N802
                self._forward("GET", None)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "StowStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def stow_stand_in() -> Iterator[type[StowStandIn]]:
    yield StowStandIn
