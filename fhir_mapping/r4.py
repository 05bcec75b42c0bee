"""The one module that pins the FHIR release we write: R4 (4.0.1) via `fhir.resources.R4B`.

fhir.resources 8 ships R5 as its default and has no R4 sub-package; its README says R4B replaces
R4, and the elements we emit (DiagnosticReport, Observation, Device, Provenance, Bundle) are the
same in R4 and R4B. Tests additionally check every emitted resource against HL7's official R4
JSON schema, which catches the few R4B-only elements a model would accept.
"""
from __future__ import annotations

from typing import Any

from fhir_mapping.errors import FhirMappingError

FHIR_VERSION = "4.0.1"
_MAX_LISTED = 20


def model_class(resource_type: str):
    """The pinned release's pydantic model for ``resource_type`` (e.g. ``"DiagnosticReport"``)."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        raise FhirMappingError(f"resourceType {resource_type!r} is not a FHIR R4 resource",
                               code="invalid-fhir", status=500) from None


def _empty_values(value: Any, path: str, out: list[str]) -> None:
    """Collect paths of null, empty-string, empty-list and empty-object values (not allowed in FHIR JSON).

    The R4B models accept an explicit ``None`` for a required element (IMAGING_FHIR.md §5.5), so
    this check runs first.
    """
    if value is None:
        out.append(f"{path}: null")
    elif isinstance(value, str):
        if not value.strip():
            out.append(f"{path}: empty string")
    elif isinstance(value, list):
        if not value:
            out.append(f"{path}: empty array")
        for i, item in enumerate(value):
            _empty_values(item, f"{path}[{i}]", out)
    elif isinstance(value, dict):
        if not value:
            out.append(f"{path}: empty object")
        for key, item in value.items():
            _empty_values(item, f"{path}.{key}", out)


def validate_r4(resource: dict) -> None:
    """Validate one resource (a Bundle validates its entries too) with the pinned R4 models.

    Parameters
    ----------
    resource : dict
        FHIR JSON with a ``resourceType``.

    Raises
    ------
    FhirMappingError
        ``code="invalid-fhir"``: the message lists each failing element path and why.
    """
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        found = type(resource).__name__ if not isinstance(resource, dict) else "no resourceType"
        raise FhirMappingError(f"not a FHIR resource ({found}); expected a JSON object with a resourceType",
                               code="invalid-fhir", status=500)
    resource_type = resource["resourceType"]
    problems: list[str] = []
    _empty_values(resource, resource_type, problems)
    if not problems:
        from pydantic import ValidationError

        try:
            model_class(resource_type).model_validate(resource)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in (resource_type, *err["loc"]))
                problems.append(f"{where}: {err['msg']}")
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise FhirMappingError(
            f"{resource_type} is not valid FHIR R4 ({len(problems)} problem(s)): {listed}{more}",
            code="invalid-fhir", status=500)


def round_trip(resource: dict) -> dict:
    """Parse with the pinned model and dump back to JSON (``mode="json"``: datetimes as strings)."""
    model = model_class(resource["resourceType"]).model_validate(resource)
    return model.model_dump(mode="json", exclude_none=True)
