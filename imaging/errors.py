"""The imaging error family: one root, a stable short ``code`` and an HTTP status per type.

Messages say what was found and what to do, and never carry patient identifiers (names, PatientID,
birth dates) or credentials: they end up in logs and in cards.
"""
from __future__ import annotations


class ImagingError(Exception):
    """Root of every error the imaging package raises to its callers.

    Attributes
    ----------
    code : str
        Short stable identifier (``"study_not_found"`` ...), for cards, metrics and tests.
    http_status : int
        The status an HTTP surface should answer with.
    """

    code: str = "imaging_error"
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class StudyNotFound(ImagingError):
    """No study (or no instance) matches what was asked for."""

    code = "study_not_found"
    http_status = 404


class NoFrontalRadiograph(ImagingError):
    """The study exists but holds no frontal (PA/AP) chest CR/DX image."""

    code = "no_frontal_radiograph"
    http_status = 422


class UnsupportedImage(ImagingError):
    """A readable image we will not turn into a radiograph (CT, no pixels, too large, palette ...)."""

    code = "unsupported_image"
    http_status = 422


class UndecodableImage(ImagingError):
    """Pixel data that cannot be decoded: missing decoder, truncated or corrupt file, or a decoder that
    crashed, ran past its time limit or its memory limit (in a child process: the service survives).

    Attributes
    ----------
    sop_instance_uid : str or None
        The instance it concerns, when known.
    fingerprint : str or None
        :func:`imaging.fingerprint.instance_fingerprint` of the instance version that failed
        (``"sha256:<hex>"``), when a dataset was read: record the failure against (UID, fingerprint)
        and :func:`imaging.fetch_radiograph` (``known_undecodable=``) answers from the record without
        decoding again until the stored instance changes.
    """

    code = "undecodable_image"
    http_status = 422

    def __init__(self, message: str, *, code: str | None = None, sop_instance_uid: str | None = None,
                 fingerprint: str | None = None) -> None:
        super().__init__(message, code=code)
        self.sop_instance_uid = sop_instance_uid
        self.fingerprint = fingerprint


class ImagingUnavailable(ImagingError):
    """The PACS (or image folder) cannot be reached or refused us (down, 5xx, 401/403, timeout)."""

    code = "imaging_unavailable"
    http_status = 503
