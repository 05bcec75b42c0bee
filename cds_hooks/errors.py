"""The service's errors: one root, each with an HTTP status and a stable short code.

One Flask error handler (cds_hooks.app) renders them as a FHIR OperationOutcome, except 401,
which carries no detail at all (best practice: never say why a token was refused).
"""
from __future__ import annotations


class CdsHooksError(Exception):
    """Root of the service's errors; ``status`` is the HTTP status, ``code`` a stable short string.

    ``issue_code`` is the FHIR ``OperationOutcome.issue.code`` (IssueType value set).
    """

    status = 500
    code = "internal"
    issue_code = "exception"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(CdsHooksError):
    """The request body is not a valid CDS Hooks request (400)."""

    status = 400
    code = "bad-request"
    issue_code = "invalid"


class InvalidField(BadRequest):
    """One field of the JSON body is malformed (400); ``field`` names it (``context.draftOrders.entry[0]``)."""

    code = "invalid-field"

    def __init__(self, message: str, *, field: str, code: str | None = None):
        super().__init__(message)
        self.field = field
        if code is not None:
            self.code = code


class PayloadTooLarge(CdsHooksError):
    """The request body is larger than ``CXR_CDS_MAX_REQUEST_BYTES`` (413)."""

    status = 413
    code = "too-large"
    issue_code = "too-costly"


class UnsupportedMediaType(CdsHooksError):
    """A JSON endpoint was sent a body that is not declared as JSON (415)."""

    status = 415
    code = "unsupported-media-type"
    issue_code = "not-supported"


class UnknownService(CdsHooksError):
    """No CDS service, study or draft with that id (404)."""

    status = 404
    code = "not-found"
    issue_code = "not-found"


class PreconditionFailed(CdsHooksError):
    """Data the service needs is neither in prefetch nor obtainable from fhirServer (412)."""

    status = 412
    code = "precondition-failed"
    issue_code = "incomplete"


class Unauthorized(CdsHooksError):
    """The bearer JWT is missing or does not verify (401). The message is logged, never sent."""

    status = 401
    code = "unauthorized"
    issue_code = "security"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable and the fix."""


def operation_outcome(message: str, *, issue_code: str = "exception", severity: str = "error") -> dict:
    """A minimal R4 OperationOutcome carrying one issue.

    Parameters
    ----------
    message : str
        Human-readable diagnostics (never patient identifiers or tokens).
    issue_code : str
        FHIR IssueType code (``invalid``, ``not-found``, ``incomplete``, ``too-costly``, ...).
    severity : str
        FHIR IssueSeverity (``fatal``, ``error``, ``warning``, ``information``).

    Returns
    -------
    dict
        ``{"resourceType": "OperationOutcome", "issue": [...]}``
    """
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": issue_code, "diagnostics": message}],
    }
