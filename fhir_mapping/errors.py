"""The errors of fhir_mapping: one root, with an HTTP status and a stable short code."""
from __future__ import annotations


class FhirMappingError(ValueError):
    """A FHIR resource could not be read, or a draft could not be built or validated.

    ``code`` is a stable short string and ``status`` the HTTP status a service should answer with:

    - ``"invalid-resource"`` (400): an inbound resource has the wrong type or shape;
    - ``"invalid-draft-input"`` (500): `DraftInputs` got a value the draft cannot carry (our bug);
    - ``"invalid-fhir"`` (500): an emitted resource failed R4 validation (our bug).
    """

    def __init__(self, message: str, *, code: str = "invalid-resource", status: int = 400):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
