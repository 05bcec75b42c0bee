"""Identifiers in log lines: accession numbers as a short keyed hash, ``hookInstance`` as a checked token.

A log line may say *which* order or call it is about, so that an operator can correlate lines, but it
never holds the identifier itself. :func:`accession_tag` gives the first 12 hex digits of
HMAC-SHA256(``CXR_CDS_LOG_KEY``, value): stable across the processes of one deployment when the key
is set (a fleet must share it to correlate), random per process when it is not; without the key
the tag cannot be reversed by trying the (small) space of accession numbers. :func:`hook_instance_tag`
logs a UUID as it is (CDS Hooks clients send UUIDs) and anything else as ``h:<hash>``: never raw,
never a newline, never long.

:func:`scrub` rewrites the identifier-shaped phrases that error messages from other packages use
(``AccessionNumber ACC0042``, ``accession ACC0042``) into tags; :class:`RedactIdentifiers` applies it
to every record of the service's loggers.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import traceback
import uuid
from typing import Any

#: The setting that keys the hashes (an environment variable, read at first use: logging must work
#: before and without a Settings object).
LOG_KEY_ENV = "CXR_CDS_LOG_KEY"
TAG_HEX = 12

_key_lock = threading.Lock()
_key: bytes | None = None


def _log_key() -> bytes:
    global _key
    with _key_lock:
        if _key is None:
            configured = os.environ.get(LOG_KEY_ENV, "").strip()
            _key = configured.encode("utf-8") if configured else secrets.token_bytes(32)
        return _key


def set_log_key(key: str | None) -> None:
    """Use ``key`` (the ``CXR_CDS_LOG_KEY`` setting) for tags from now on; None: a random key of this process."""
    global _key
    with _key_lock:
        _key = key.encode("utf-8") if key else secrets.token_bytes(32)


def _digest(value: str) -> str:
    data = value.encode("utf-8", "surrogatepass")
    return hmac.new(_log_key(), data, hashlib.sha256).hexdigest()[:TAG_HEX]


def accession_tag(value: Any) -> str:
    """A short keyed hash of an accession number, for log lines (``acc:3f9a0c1b2d4e``).

    Parameters
    ----------
    value : Any
        The accession number (``None`` or empty gives ``acc:-``).

    Returns
    -------
    str
        ``acc:`` and 12 hex digits of HMAC-SHA256 keyed by ``CXR_CDS_LOG_KEY``.
    """
    if value is None or value == "":
        return "acc:-"
    return "acc:" + _digest(str(value))


def hook_instance_tag(value: Any) -> str:
    """``hookInstance`` as it may appear in a log line: a UUID as is (lower case), else ``h:<hash>``.

    Parameters
    ----------
    value : Any
        The request's ``hookInstance`` (attacker-chosen: any length, newlines, lone surrogates).

    Returns
    -------
    str
        The canonical UUID text, or ``h:`` and 12 hex digits of a keyed hash; at most 36 characters,
        never a control character.
    """
    if isinstance(value, str) and len(value) <= 45:
        try:
            parsed = uuid.UUID(value.strip("{}"))
        except ValueError:
            parsed = None
        if parsed is not None and value.strip("{}").lower() in (str(parsed), parsed.hex):
            return str(parsed)
    if value is None:
        return "h:-"
    return "h:" + _digest(value if isinstance(value, str) else repr(value))


# "AccessionNumber ACC0042", "AccessionNumber=ACC0042", "accession ACC0042", "accession number: ACC0042";
# the value must hold a digit, so that prose ("the accession number belongs to ...") stays as it is
_ACCESSION_PHRASE = re.compile(
    r"(?i)\b(accession(?:[ _]?number)?)(\s*[=:]?\s*)(?!acc:)(?=[^\s,;'\")\]}]*\d)([^\s,;'\")\]}]+)")


def scrub(text: str) -> str:
    """``text`` with each accession number named after the word "accession"/"AccessionNumber" replaced by its tag."""
    return _ACCESSION_PHRASE.sub(lambda m: f"{m.group(1)}{m.group(2)}{accession_tag(m.group(3))}", text)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` for a log line: control characters (newlines included) escaped, at most ``limit`` characters."""
    out = text.encode("unicode_escape", "backslashreplace").decode("ascii") if not text.isprintable() else text
    return out if len(out) <= limit else out[: limit - 3] + "..."


class RedactIdentifiers(logging.Filter):
    """Applies :func:`scrub` to a record's formatted message (attach to the service's loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:   # noqa: BLE001 - a record whose args do not format: the handler reports it
            return True
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        return True


_filter = RedactIdentifiers()

#: The service's loggers whose records are scrubbed (a Filter acts on its own logger's records only).
#: Besides these, every logger already created under ``cds_hooks``, ``imaging`` or ``fhir_mapping``.
SERVICE_LOGGERS = ("cds_hooks.app", "cds_hooks.boundary", "cds_hooks.hooks", "cds_hooks.jobs", "cds_hooks.worker",
                   "cds_hooks.studies", "cds_hooks.context", "cds_hooks.security", "cds_hooks.review",
                   "cds_hooks.runtime", "cds_hooks.pipeline", "cds_hooks.store", "imaging.radiograph",
                   "imaging.locate", "imaging.select", "imaging.folder", "imaging.source", "imaging.dicomweb")
_PACKAGES = ("cds_hooks", "imaging", "fhir_mapping")


def install_log_redaction() -> None:
    """Add :class:`RedactIdentifiers` to the service's loggers (idempotent; call after importing the views)."""
    existing = [name for name in list(logging.root.manager.loggerDict)
                if name.split(".")[0] in _PACKAGES]
    for name in dict.fromkeys(SERVICE_LOGGERS + tuple(existing)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactIdentifiers) for f in logger.filters):
            logger.addFilter(_filter)


def frames(error: BaseException) -> str:
    """The traceback of ``error`` as ``File "...", line N, in name`` lines: no message and no source text
    (a source line can hold a literal, the message can quote request data)."""
    return "".join(f'  File "{f.filename}", line {f.lineno}, in {f.name}\n'
                   for f in traceback.extract_tb(error.__traceback__))
