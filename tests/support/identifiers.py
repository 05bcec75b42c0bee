"""The synthetic patients' identifiers the suite uses, and the check that no log line holds one.

One place for the list: tests/cds_hooks/conftest.py (studies, the section 7.2 examples), the end-to-end
and CLI tests, ``tests/support/synthetic_cxr.py`` defaults (random ``ACC``/``PAT`` ids, ``SYNTHETIC^...``
names), the demo, and the tokens (every JWT, the PACS secret, the EHR's access token). The session
fixture in tests/conftest.py collects every formatted log record; tests/test_zz_logs.py runs
:func:`find_leaks` over them and over the log files of the servers the suite started.
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from pathlib import Path

#: Patient names as they appear in DICOM (PN) and FHIR (family/given), synthetic.
NAMES = ("Testpatient^Jane", "Testpatient", "SYNTHETIC^CHEST", "SYNTHETIC^CT")
#: MRNs (DICOM PatientID, FHIR Patient.identifier) of the synthetic patients.
MRNS = ("MRN0042", "MRN0077", "MRN0099", "MRN-NONE", "MRN12345678", "MRNE2E01", "MRN-CLI-8", "MRN-CLI-9",
        "MRN-7734-SECRET", "MRN-OTHER", "MRN-NOPE", "DEMO-MRN-0001")
#: Accession numbers of the synthetic orders and studies.
ACCESSION_NUMBERS = ("ACC0042", "ACC0077OLD", "ACC0099", "ACCE2E01", "ACC-2024-0001", "ACC-NOT-YET", "ACC-CLI-1",
                     "ACC-CLI-8", "ACC-CLI-9", "ACC-CLI-SR", "ACC-SR-1", "ACC-OTHER", "ACC-NOPE", "ACC-MISSING",
                     "DEMO-ACC-0001")
#: Secrets the tests send (the EHR's access token of example A, the PACS shared secret's prefix).
TOKENS = ("opaque-short-lived-token", "pacs-0123456789abcdef")

_LITERALS = NAMES + MRNS + ACCESSION_NUMBERS + TOKENS
_PATTERNS = (
    # synthetic_cxr defaults: prefix + 12 upper-case hex digits (random per study)
    re.compile(r"\b(?:ACC|PAT)[0-9A-F]{12}\b"),
    # any JWT (header.payload.signature, both JSON parts base64url of "{"): every token minted in tests
    re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),
)


def find_leaks(lines: Iterable[str]) -> list[str]:
    """The lines holding a synthetic identifier or a token, each prefixed with what it holds."""
    out = []
    for line in lines:
        hits = [value for value in _LITERALS if value in line]
        hits += [m.group(0)[:24] for pattern in _PATTERNS for m in pattern.finditer(line)]
        if hits:
            at = min(line.find(h) for h in hits if h in line) if any(h in line for h in hits) else 0
            where = line.split(" | ", 1)[0]
            out.append(f"[{', '.join(dict.fromkeys(hits))}] {where} | ..."
                       + line[max(0, at - 150):at + 150].replace("\n", "\\n") + "...")
    return out


class LogCollector(logging.Handler):
    """A root-logger handler keeping every formatted record of the session (with the emitting test)."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []
        self.current_test = "(session setup)"
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:   # noqa: BLE001 - a record that does not format is not written by handlers either
            return
        with self._guard:
            self.lines.append(f"{self.current_test} | {text}")


def server_log_lines(base: Path) -> list[str]:
    """Lines of the log files written by the servers the suite started (``serve.log`` of tests/cds_hooks/serving.py)."""
    out = []
    for path in sorted(base.rglob("serve.log")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        out.extend(f"{path.parent.name}/serve.log | {line}" for line in text.splitlines())
    return out
