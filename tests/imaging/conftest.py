"""Fixtures for the imaging tests: the same study stored in a real Orthanc or in a folder.

``store_study`` is parametrised over both sources, so every selection test runs against the PACS
(DICOMweb on loopback) and against the embedded folder source.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from imaging import DicomWebSource, FolderSource, ImageSource
from tests.support.synthetic_cxr import write

StoreStudy = Callable[..., ImageSource]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image-folder")


@pytest.fixture(scope="session")
def dicomweb(orthanc) -> DicomWebSource:
    return DicomWebSource.from_url(orthanc.dicomweb_url, timeout_s=30)


@pytest.fixture(params=[pytest.param("orthanc", marks=pytest.mark.orthanc), "folder"])
def store_study(request, image_folder) -> StoreStudy:
    """``store_study(*datasets) -> ImageSource`` holding them (tests use unique UIDs, never collide)."""
    if request.param == "orthanc":
        orthanc = request.getfixturevalue("orthanc")
        source = request.getfixturevalue("dicomweb")

        def store(*datasets: Dataset) -> ImageSource:
            orthanc.store(*datasets)
            return source
    else:
        source = FolderSource(image_folder)

        def store(*datasets: Dataset) -> ImageSource:
            for ds in datasets:
                write(ds, image_folder / f"{uuid.uuid4().hex}.dcm")
            return source
    store.kind = request.param  # type: ignore[attr-defined]
    return store


class FakePacs:
    """A hand-written DICOMweb stand-in on loopback: answers every request with one fixed status.

    Used only where Orthanc cannot be made to misbehave on purpose (5xx, slow answers, bearer tokens,
    malformed JSON, a body without Content-Length: HTTP/1.0, delimited by closing the connection).
    """

    def __init__(self, status: int = 200, body: bytes = b"[]", delay_s: float = 0.0,
                 content_type: str = "application/dicom+json", content_length: bool = True) -> None:
        self.status, self.body, self.delay_s, self.content_type = status, body, delay_s, content_type
        self.content_length = content_length
        self.requests: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                fake.requests.append({"path": self.path, **{k: v for k, v in self.headers.items()}})
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                try:
                    self.send_response(fake.status)
                    self.send_header("Content-Type", fake.content_type)
                    if fake.content_length:
                        self.send_header("Content-Length", str(len(fake.body)))
                    self.end_headers()
                    self.wfile.write(fake.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass          # the client gave up (timeout test)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakePacs":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
