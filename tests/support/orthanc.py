"""A real Orthanc + DICOMweb plugin on 127.0.0.1 for tests and benchmarks.

Config and quirks: ../shared/reference/IMAGING_FHIR.md §1. No GDCM plugin (its transcoders crash this
Debian build); the project always retrieves with ``transfer-syntax=*`` so Orthanc never transcodes.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import requests
from pydicom.dataset import Dataset

ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc",)
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def find_orthanc() -> str | None:
    """Path of the Orthanc binary, or None when it is not installed."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in ORTHANC_CANDIDATES if Path(p).exists()), None)


def _free_port() -> int:
    # Small race (the port is released before Orthanc binds it); start() retries on a bind failure.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dicom_bytes(ds: Dataset) -> bytes:
    """Serialise ``ds`` as a DICOM Part 10 file: 128-byte preamble + ``DICM`` + file meta.

    pydicom 3 writes no preamble for an in-memory dataset (``ds.preamble is None``), and Orthanc
    stores such bytes unchanged, which later breaks retrieval (IMAGING_FHIR.md §1.1, STOW quirk).
    """
    buf = io.BytesIO()
    if getattr(ds, "preamble", None) is None:
        ds.preamble = b"\x00" * 128
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class OrthancServer:
    """One Orthanc process with its own temporary config and storage.

    Parameters
    ----------
    workdir
        Directory for the config, the database and the log (created if missing).
    users
        ``{"user": "password"}`` turns HTTP basic authentication on (401 without credentials).
    """

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.users = dict(users or {})
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None

    # -- addresses -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("OrthancServer is not started; call .start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials of the first registered user (for requests' ``auth=``), or None."""
        return next(iter(self.users.items()), None)

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle -------------------------------------------------------------------------------
    def _write_config(self, port: int) -> Path:
        db = self.workdir / "db"
        cfg_dir = self.workdir / "cfg"
        db.mkdir(parents=True, exist_ok=True)
        cfg_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cxr-cds-test",
            "StorageDirectory": str(db),
            "IndexDirectory": str(db),
            "HttpPort": port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomServerEnabled": False,
            "SaveJobs": False,
            "StableAge": 2,
            "HttpsCACertificates": "/etc/ssl/certs/ca-certificates.crt",
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                # Without Host, QIDO's RetrieveURL lacks the port (§1.2).
                "Host": f"127.0.0.1:{port}",
                "Ssl": False,
            },
        }
        path = cfg_dir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return cfg_dir

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout_s: float = 20.0) -> "OrthancServer":
        """Start Orthanc on a free loopback port and wait until ``/system`` answers.

        Raises
        ------
        RuntimeError
            Orthanc is not installed, exited during start-up (with the log tail), or did not answer.
        """
        if self._proc is not None:
            raise RuntimeError(f"Orthanc already started (pid {self._proc.pid})")
        binary = find_orthanc()
        if binary is None:
            raise RuntimeError("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb")
        last_error = ""
        for _attempt in range(3):  # a port taken between _free_port() and bind: try another one
            port = _free_port()
            cfg_dir = self._write_config(port)
            self.port = port
            self._proc = subprocess.Popen(
                [binary, f"--logfile={self.log_path}", str(cfg_dir)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self.workdir,
            )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    last_error = (f"Orthanc exited with code {self._proc.returncode} during start-up; "
                                  f"log tail ({self.log_path}):\n{self.log_tail()}")
                    break
                if self._answers():
                    return self
                time.sleep(0.05)
            else:
                self.stop()
                raise RuntimeError(f"Orthanc did not answer /system within {timeout_s} s; "
                                   f"log tail:\n{self.log_tail()}")
            self._proc = None
            self.port = None
        raise RuntimeError(last_error)

    def _answers(self) -> bool:
        try:
            r = requests.get(f"{self.base_url}/system", auth=self.auth, timeout=1)
        except requests.RequestException:
            return False
        return r.status_code == 200

    def alive(self) -> bool:
        """True when the process runs and ``/system`` answers (a crash shows up here, §1.4)."""
        return self._proc is not None and self._proc.poll() is None and self._answers()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the process by PID (SIGTERM, then SIGKILL) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- data ------------------------------------------------------------------------------------
    def store(self, *datasets: Dataset | bytes | str | os.PathLike) -> list[dict]:
        """Upload instances through Orthanc's REST ``POST /instances``.

        Accepts pydicom Datasets (serialised with preamble + ``DICM``), Part 10 bytes, or file paths.
        Returns Orthanc's JSON answer per instance (``ID``, ``ParentStudy``, ``Status`` ...).
        """
        answers = []
        for item in datasets:
            if isinstance(item, Dataset):
                data = dicom_bytes(item)
            elif isinstance(item, (bytes, bytearray)):
                data = bytes(item)
            else:
                data = Path(item).read_bytes()
            r = requests.post(f"{self.base_url}/instances", data=data, auth=self.auth, timeout=30,
                              headers={"Content-Type": "application/dicom"})
            if r.status_code != 200:
                raise RuntimeError(f"Orthanc refused the upload: HTTP {r.status_code} {r.text[:200]}")
            answers.append(r.json())
        return answers

    def stored_bytes(self, orthanc_id: str) -> bytes:
        """The file Orthanc stored for one instance (``GET /instances/{id}/file``)."""
        r = requests.get(f"{self.base_url}/instances/{orthanc_id}/file", auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.content

    def read_stored(self, orthanc_id: str) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.stored_bytes(orthanc_id)))
