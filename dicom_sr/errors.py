"""The dicom_sr error family: one root, a stable short ``code``, and whether a retry may help.

Messages name UIDs, HTTP statuses and DICOM failure reasons, never patient identifiers (names,
PatientID, birth dates) or credentials: they end up in logs.
"""
from __future__ import annotations


class DicomSrError(Exception):
    """Root of every error the dicom_sr package raises to its callers.

    Attributes
    ----------
    code : str
        Short stable identifier (``"sr_store_failed"`` ...), for logs, metrics and tests.
    retryable : bool
        True when the same write may succeed later (PACS down, 5xx, timeout); False when it will
        fail again until something is changed (a refusal, bad inputs, a configuration error).
    http_status : int | None
        The PACS's HTTP status, when there was one.
    """

    code: str = "dicom_sr_error"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.http_status = http_status

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidSrInput(DicomSrError, ValueError):
    """The analysis or the image header cannot make a valid SR (missing UIDs, not an image ...)."""

    code = "sr_invalid_input"


class SrStoreFailed(DicomSrError):
    """STOW-RS did not complete for a reason a later retry may fix: connection, timeout, 5xx."""

    code = "sr_store_failed"
    retryable = True


class SrStoreRefused(DicomSrError):
    """The PACS refused the SR (4xx, or a failure reason in the STOW-RS response): not retried."""

    code = "sr_store_refused"
