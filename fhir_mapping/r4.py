"""The one module that pins the FHIR release we write: R4 (4.0.1) via `fhir.resources.R4B`.

fhir.resources 8 ships R5 as its default and has no R4 sub-package; its README says R4B replaces
R4, and the elements we emit (DiagnosticReport, Observation, Device, Provenance, Bundle) are the
same in R4 and R4B. Tests additionally check every emitted resource against HL7's official R4
JSON schema, which catches the few R4B-only elements a model would accept.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any

from fhir_mapping.errors import FhirMappingError

FHIR_VERSION = "4.0.1"
_MAX_LISTED = 20

# --- the R4 `string` / `markdown` character rules -------------------------------------------------------
# HL7's R4 JSON schema gives `string` and `markdown` the pattern ^[ \r\n\t\S]+$: among whitespace,
# only space, CR, LF and tab. Evaluated with Python's `re` (what jsonschema uses) \S excludes every
# character for which str.isspace() is true, so VT, FF, FS/GS/RS/US (\x1c-\x1f), NEL, NBSP and the
# Unicode spaces and line/paragraph separators all fail it. The FHIR spec also says strings should
# carry no other control characters below U+0020 (\x00 passes the regex but not an XML parser),
# lone surrogates cannot be encoded as UTF-8 at all, and noncharacters (U+FFFE, U+FDD0, ...) are
# not allowed in XML. The R4B models accept all of these except lone surrogates.
_LINE_BREAKS = frozenset("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")     # str.splitlines() breaks on these too
# U+nFFFE and U+nFFFF of every plane, and U+FDD0-U+FDEF
_NONCHARACTERS = "".join(chr(plane + 0xFFFE) + chr(plane + 0xFFFF) for plane in range(0, 0x110000, 0x10000))
_NOT_A_STRING_CHAR = re.compile(
    "[^ \t\r\n\\S]"                        # the schema's own pattern, negated (Python's Unicode \s)
    "|[\x00-\x08\x0e-\x1f\x7f-\x9f]"          # the other C0 controls, DEL, C1 controls
    "|[\ud800-\udfff]"                       # lone surrogates (a str holds a valid pair as one code point)
    "|[\ufeff\ufdd0-\ufdef" + _NONCHARACTERS + "]")   # BOM (whitespace to ECMAScript's \\s); noncharacters


def _replacement(match: re.Match) -> str:
    char = match.group()
    if char in _LINE_BREAKS:
        return "\n"
    if char.isspace():
        return " "            # NBSP, thin space, US (\x1f), ...: keep the words apart
    if unicodedata.category(char) == "Cs":
        return "\ufffd"       # a lone surrogate: mark that something unreadable was there
    return ""                 # NUL and other controls, noncharacters, BOM: nothing to read


def fhir_string(text: str) -> str:
    """Make free text (model output, EHR text) a valid FHIR R4 ``string`` / ``markdown`` value.

    Line and paragraph separators (VT, FF, NEL, U+2028, ...) become ``"\\n"``; other whitespace the
    R4 schema rejects (NBSP, thin space, \\x1f) becomes a space; lone surrogates become U+FFFD;
    remaining control characters (except tab, CR, LF) and noncharacters are removed. Clean text
    comes back unchanged.

    Parameters
    ----------
    text : str

    Returns
    -------
    str
        Text that matches the R4 ``string`` pattern (when it has a non-whitespace character) and
        encodes as UTF-8.
    """
    if not isinstance(text, str):
        raise TypeError(f"fhir_string takes a str, got {type(text).__name__}")
    return _NOT_A_STRING_CHAR.sub(_replacement, text)


def _bad_character(value: str) -> str | None:
    """Why ``value`` cannot be a FHIR string: the first offending character and its offset, else None."""
    match = _NOT_A_STRING_CHAR.search(value)
    if match is None:
        return None
    char = match.group()
    name = unicodedata.name(char, None) if unicodedata.category(char) != "Cs" else "lone surrogate"
    label = f"U+{ord(char):04X}" + (f" {name}" if name else "")
    return (f"character {label} at offset {match.start()} is not allowed in a FHIR string "
            f"(of control and whitespace characters only space, tab, CR and LF are; "
            f"clean free text with fhir_mapping.fhir_string)")


def model_class(resource_type: str):
    """The pinned release's pydantic model for ``resource_type`` (e.g. ``"DiagnosticReport"``)."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        raise FhirMappingError(f"resourceType {resource_type!r} is not a FHIR R4 resource",
                               code="invalid-fhir", status=500) from None


def _value_problems(value: Any, path: str, out: list[str]) -> None:
    """Collect paths of null, empty-string, empty-list and empty-object values (not allowed in FHIR JSON),
    and of strings with characters the R4 schema (or UTF-8) rejects.

    The R4B models accept an explicit ``None`` for a required element (IMAGING_FHIR.md §5.5) and
    control characters in strings, so this check runs first.
    """
    if value is None:
        out.append(f"{path}: null")
    elif isinstance(value, str):
        if not value.strip():
            out.append(f"{path}: empty string")
        elif (why := _bad_character(value)) is not None:
            out.append(f"{path}: {why}")
    elif isinstance(value, list):
        if not value:
            out.append(f"{path}: empty array")
        for i, item in enumerate(value):
            _value_problems(item, f"{path}[{i}]", out)
    elif isinstance(value, dict):
        if not value:
            out.append(f"{path}: empty object")
        for key, item in value.items():
            _value_problems(item, f"{path}.{key}", out)


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
    _value_problems(resource, resource_type, problems)
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
