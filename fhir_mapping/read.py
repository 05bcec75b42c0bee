"""FHIR in: Patient, ServiceRequest, Condition and Encounter JSON -> `OrderInfo` and `ClinicalContext`.

Tolerant but checked (highdicom's rule for reading): resources arrive as plain JSON dicts from
EHRs on R4 and, in practice, on STU3/R5 too, so nothing here needs `fhir.resources` to parse
them. Each field we use is checked where it is read; a missing or odd-shaped field reads as
absent. What is *not* tolerated is a resource of the wrong type (a Patient where an Encounter is
expected): that is a caller's bug and raises `FhirMappingError`. An OperationOutcome in place of
a resource (CDS Hooks prefetch reports failures that way) reads as "no data".

Accession numbers. `read_order` takes ``ServiceRequest.identifier`` entries typed ACSN (v2-0203,
R4 or STU3 system), or whose system or type text names an accession number. An identifier
without a type is **not** taken, even when it is the only one: in EHR order messages it is
usually the placer order number, which is not the DICOM AccessionNumber, and a wrong accession
would make QIDO-RS look up another study. The pipeline then falls back to PatientID + date.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Iterable

from prompts.context import ClinicalContext

from fhir_mapping import codes
from fhir_mapping.errors import FhirMappingError

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Relative ("Patient/1"), absolute ("https://ehr/fhir/Patient/1") or versioned (".../_history/2").
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_ORDER_TYPES = ("ServiceRequest", "ProcedureRequest")   # R4/R5, STU3
_DICOM_LO_MAX = 64                                     # PatientID is VR LO: 64 chars, no backslash
_MAX_AGE = 130


@dataclass(frozen=True)
class OrderInfo:
    """What the service uses of an imaging order (ServiceRequest; STU3 ProcedureRequest).

    ``codings`` are (system, code, display) of ``ServiceRequest.code``; references are normalised
    to relative ``Type/id`` form (absolute URLs and ``_history`` stripped) or None.
    """

    id: str | None
    codings: tuple[tuple[str, str, str | None], ...] = ()
    text: str | None = None
    accession_number: str | None = None
    subject_reference: str | None = None
    encounter_reference: str | None = None
    reason_texts: tuple[str, ...] = ()
    status: str | None = None                   # draft, active, ... (order-sign may re-sign active orders)
    resource_type: str = "ServiceRequest"       # "ProcedureRequest" when an STU3 EHR sent one


# --- small readers: each returns None/() for anything it does not understand ----------------------
def _text(value: Any) -> str | None:
    """A non-blank string with whitespace collapsed, else None."""
    if isinstance(value, str):
        collapsed = " ".join(value.split())
        return collapsed or None
    return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    """A FHIR repeating element as a list; a lone object (a shape from another version) is wrapped."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    return []


def _concept_text(concept: Any) -> str | None:
    """Human text of a CodeableConcept: ``text``, else the first coding's display."""
    concept = _dict(concept)
    if "concept" in concept:                            # R5 CodeableReference
        concept = _dict(concept["concept"])
    text = _text(concept.get("text"))
    if text:
        return text
    for c in _list(concept.get("coding")):
        display = _text(_dict(c).get("display"))
        if display:
            return display
    return None


def _codes(value: Any) -> list[tuple[str | None, str]]:
    """(system, code) pairs of a code given as a plain string (STU3 and older), Coding or CodeableConcept."""
    if isinstance(value, str):
        return [(None, value.strip())] if value.strip() else []
    value = _dict(value)
    if "code" in value and "coding" not in value:       # a bare Coding
        code = _text(value.get("code"))
        return [(_text(value.get("system")), code)] if code else []
    out = []
    for c in _list(value.get("coding")):
        code = _text(_dict(c).get("code"))
        if code:
            out.append((_text(_dict(c).get("system")), code))
    return out


def _dedupe(values: Iterable[str | None]) -> tuple[str, ...]:
    """Drop Nones and case-insensitive repeats, keeping the first spelling and the order."""
    seen: set[str] = set()
    out = []
    for v in values:
        if v and v.casefold() not in seen:
            seen.add(v.casefold())
            out.append(v)
    return tuple(out)


def normalize_reference(reference: Any, resource_type: str | None = None) -> str | None:
    """``Type/id`` from a Reference (absolute URL and ``_history`` stripped); None for anything else.

    Contained (``#x``) and Bundle-local (``urn:uuid:``) references mean nothing outside the
    request they came in, so they read as None; so does a reference to another ``resource_type``.
    """
    value = _text(_dict(reference).get("reference"))
    if not value:
        return None
    match = _REFERENCE.search(value)
    if not match or value.startswith(("#", "urn:")):
        return None
    if resource_type is not None and match.group(1) != resource_type:
        return None
    return f"{match.group(1)}/{match.group(2)}"


def _resource(value: Any, expected: tuple[str, ...], role: str) -> dict | None:
    """The resource if it has one of the ``expected`` types; None for None or an OperationOutcome."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FhirMappingError(f"{role} must be a FHIR resource (a JSON object), got {type(value).__name__}")
    resource_type = value.get("resourceType")
    if resource_type == "OperationOutcome":
        return None                                     # the EHR's way of saying "could not get it"
    if resource_type not in expected:
        raise FhirMappingError(
            f"{role} has resourceType {resource_type!r}; expected {' or '.join(expected)}")
    return value


# --- ServiceRequest -------------------------------------------------------------------------------------
def _is_accession(identifier: dict) -> bool:
    type_ = _dict(identifier.get("type"))
    for system, code in _codes(type_):
        if code == "ACSN" and system in (codes.V2_0203, codes.V2_0203_STU3, None):
            return True
    named = " ".join(filter(None, (_text(type_.get("text")), _text(identifier.get("system")))))
    return "accession" in named.casefold()


def _accession_number(identifiers: Any) -> str | None:
    for identifier in _list(identifiers):
        identifier = _dict(identifier)
        if identifier.get("use") == "old":
            continue
        value = _text(identifier.get("value"))
        if value and _is_accession(identifier):
            return value
    return None


def _reason_texts(service_request: dict) -> tuple[str, ...]:
    texts: list[str | None] = []
    for concept in _list(service_request.get("reasonCode")):     # R4, STU3
        texts.append(_concept_text(concept))
    for reason in _list(service_request.get("reason")):          # R5 CodeableReference; DSTU2 concept
        reason = _dict(reason)
        texts.append(_concept_text(reason) or _text(_dict(reason.get("reference")).get("display")))
    for ref in _list(service_request.get("reasonReference")):    # R4, STU3
        texts.append(_text(_dict(ref).get("display")))
    return _dedupe(texts)


def read_order(service_request: dict) -> OrderInfo:
    """Read an imaging order.

    Parameters
    ----------
    service_request : dict
        FHIR JSON ServiceRequest (R4/R5) or ProcedureRequest (STU3).

    Returns
    -------
    OrderInfo

    Raises
    ------
    FhirMappingError
        When it is not a ServiceRequest/ProcedureRequest (an OperationOutcome included: the
        caller asked for an order, and the EHR sent an error).
    """
    if isinstance(service_request, dict) and service_request.get("resourceType") == "OperationOutcome":
        raise FhirMappingError("got an OperationOutcome instead of the ServiceRequest: the EHR could not "
                               "provide the order; read the order from draftOrders or fetch it again")
    sr = _resource(service_request, _ORDER_TYPES, "the order")
    if sr is None:
        raise FhirMappingError("no order given; pass the ServiceRequest resource (a JSON object)")
    code = _dict(sr.get("code"))
    if "concept" in code:                                          # R5 CodeableReference
        code = _dict(code["concept"])
    codings = []
    for c in _list(code.get("coding")):
        c = _dict(c)
        system, value = _text(c.get("system")), _text(c.get("code"))
        if system and value:                    # the sandbox sends {"coding": [{}]}: skip empty codings
            codings.append((system, value, _text(c.get("display"))))
    id_ = _text(sr.get("id"))
    return OrderInfo(
        id=id_ if id_ and _ID.fullmatch(id_) else None,
        codings=tuple(codings),
        text=_text(code.get("text")),
        accession_number=_accession_number(sr.get("identifier")),
        subject_reference=normalize_reference(sr.get("subject"), "Patient"),
        encounter_reference=normalize_reference(sr.get("encounter") or sr.get("context"), "Encounter"),
        reason_texts=_reason_texts(sr),
        status=_text(sr.get("status")),
        resource_type=sr["resourceType"],
    )


# --- Patient ---------------------------------------------------------------------------------------------
def patient_reference(patient: dict | None) -> str | None:
    """``"Patient/<id>"`` of a Patient resource; None when absent, an OperationOutcome, or id-less.

    Raises
    ------
    FhirMappingError
        When ``patient`` is a resource of another type.
    """
    p = _resource(patient, ("Patient",), "patient")
    id_ = _text(p.get("id")) if p else None
    return f"Patient/{id_}" if id_ and _ID.fullmatch(id_) else None


def patient_mrns(patient: dict | None) -> tuple[str, ...]:
    """Identifier values usable as DICOM PatientID, medical-record-number types first.

    Order: MR, then MRT and PI (temporary MRN, patient internal id), then untyped identifiers.
    Identifiers typed otherwise (SSN, driver's licence, passport..., or a type given only as
    text) are never returned: they are
    not PatientIDs and must not travel to the PACS. ``use: old`` entries and values that do not fit
    VR LO (over 64 characters, a backslash or a control character) are skipped.

    Raises
    ------
    FhirMappingError
        When ``patient`` is a resource of another type.
    """
    p = _resource(patient, ("Patient",), "patient")
    if p is None:
        return ()
    ranked: list[tuple[int, int, str]] = []
    for position, identifier in enumerate(_list(p.get("identifier"))):
        identifier = _dict(identifier)
        value = identifier.get("value")
        if identifier.get("use") == "old" or not isinstance(value, str):
            continue
        value = value.strip()
        if not value or len(value) > _DICOM_LO_MAX or "\\" in value or any(ord(ch) < 32 for ch in value):
            continue
        type_codes = [code for _, code in _codes(identifier.get("type"))]
        if not identifier.get("type"):
            rank = len(codes.IDENTIFIER_TYPES_MRN)                       # untyped: last
        else:
            known = [codes.IDENTIFIER_TYPES_MRN.index(c) for c in type_codes if c in codes.IDENTIFIER_TYPES_MRN]
            if not known:
                continue
            rank = min(known)
        ranked.append((rank, position, value))
    return _dedupe(value for _, _, value in sorted(ranked))


def _parse_fhir_date(value: Any) -> tuple[int, int | None, int | None] | None:
    """(year, month, day) of a FHIR date ("1961", "1961-04", "1961-04-02", or a dateTime); None if bad."""
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(?:T.*)?", value.strip())
    if not match:
        return None
    year, month, day = (int(g) if g else None for g in match.groups())
    try:
        date(year, month or 1, day or 1)
    except ValueError:
        return None
    return year, month, day


def age_in_years(birth_date: Any, today: date) -> int | None:
    """Whole years from a FHIR birthDate to ``today``; None when unknown, in the future or implausible.

    A partial birthDate ("1961", "1961-04") gives the youngest age it allows (born on the last day
    of that year or month). Someone born on 29 February turns a year older on 1 March in common
    years (tuple comparison of (month, day) does this).
    """
    parsed = _parse_fhir_date(birth_date)
    if parsed is None:
        return None
    year, month, day = parsed
    if month is None:                                   # "YYYY": born on 31 December at the latest
        month, day = 12, 31
    elif day is None:                                   # "YYYY-MM": the last day of that month
        day = calendar.monthrange(year, month)[1]
    age = today.year - year - ((today.month, today.day) < (month, day))
    if age < 0 or age > _MAX_AGE:
        return None
    return age


def _sex(gender: Any) -> str | None:
    gender = _text(gender)
    gender = gender.lower() if gender else None
    return gender if gender in ("male", "female", "other", "unknown") else None


# --- Condition -------------------------------------------------------------------------------------------
def _conditions(conditions: Any) -> list[dict]:
    """Condition resources out of a list, a searchset Bundle, or a list holding Bundles."""
    if conditions is None:
        return []
    if isinstance(conditions, dict):
        if conditions.get("resourceType") == "OperationOutcome":
            return []
        if conditions.get("resourceType") == "Bundle":
            items = [_dict(e).get("resource") for e in _list(conditions.get("entry"))
                     if _dict(_dict(e).get("search")).get("mode") != "outcome"]
            return _conditions([i for i in items if i is not None])
        if conditions.get("resourceType") == "Condition":
            return [conditions]
        raise FhirMappingError(f"conditions has resourceType {conditions.get('resourceType')!r}; "
                               "expected a list of Condition or a searchset Bundle")
    if not isinstance(conditions, list):
        raise FhirMappingError(f"conditions must be a list of Condition resources or a Bundle, "
                               f"got {type(conditions).__name__}")
    out = []
    for item in conditions:
        if isinstance(item, dict) and item.get("resourceType") in ("Bundle", "OperationOutcome"):
            out.extend(_conditions(item))
        else:
            resource = _resource(item, ("Condition",), "each condition")
            if resource is not None:
                out.append(resource)
    return out


def _is_current(condition: dict) -> bool:
    """Active (or recurring/relapsed) and confirmed; unrecorded statuses are given the benefit of doubt."""
    clinical = [code for _, code in _codes(condition.get("clinicalStatus"))]
    if clinical:
        if not any(c in codes.ACTIVE_CLINICAL_STATUS for c in clinical):
            return False
    elif any(k.startswith("abatement") for k in condition):    # no status, but it has ended
        return False
    verification = [code for _, code in _codes(condition.get("verificationStatus"))]
    return not verification or any(c in codes.ACCEPTED_VERIFICATION_STATUS for c in verification)


# --- Encounter -------------------------------------------------------------------------------------------
def _care_setting(encounter: dict | None) -> str | None:
    if encounter is None or encounter.get("status") in ("entered-in-error", "cancelled"):
        return None
    class_ = encounter.get("class")
    if isinstance(class_, list):                                    # R5: list of CodeableConcept
        concepts = class_
    else:                                                           # R4/STU3 Coding; DSTU2 code string
        concepts = [class_]
    for concept in concepts:
        for _, code in _codes(concept):
            if code in codes.CARE_SETTING:
                return codes.CARE_SETTING[code]
        display = _concept_text(concept) or _text(_dict(concept).get("display"))
        if display:
            return display.lower()
    return None


def _as_date(value: Any, role: str) -> date | None:
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    if isinstance(value, datetime):
        return value.date()
    parsed = _parse_fhir_date(value)
    if parsed is None or parsed[2] is None:
        raise FhirMappingError(f"{role} {value!r} is not a date; give a datetime.date or 'YYYY-MM-DD'")
    return date(*parsed)


def read_context(*, patient: dict | None = None, service_request: dict | None = None,
                 conditions: Any = None, encounter: dict | None = None, today: date | None = None,
                 prior_study_date: date | str | None = None) -> ClinicalContext:
    """Build the identifier-free `ClinicalContext` a prompt may use.

    Parameters
    ----------
    patient : dict, optional
        Patient: ``birthDate`` -> age in whole years at ``today``; ``gender`` -> sex.
    service_request : dict, optional
        The order: its reason texts, joined with "; ", become the reason for the exam.
    conditions : list of dict or dict, optional
        Condition resources, or a searchset Bundle of them (prefetch shape). Kept: clinicalStatus
        active/recurrence/relapse and verificationStatus confirmed (or either status unrecorded),
        belonging to ``patient`` when both name a patient; display names, deduplicated.
    encounter : dict, optional
        Encounter: ``class`` -> care setting ("emergency", "inpatient", "ambulatory", ...).
    today : datetime.date, optional
        Reference date for the age; default: today.
    prior_study_date : datetime.date or str, optional
        Date of the most recent prior chest radiograph, passed through.

    Any argument may be None or an OperationOutcome (read as "no data").

    Returns
    -------
    prompts.ClinicalContext

    Raises
    ------
    FhirMappingError
        A resource of the wrong type, or a ``prior_study_date`` that is not a date.
    """
    today = today or date.today()
    p = _resource(patient, ("Patient",), "patient")
    sr = _resource(service_request, _ORDER_TYPES, "service_request")
    enc = _resource(encounter, ("Encounter",), "encounter")

    own = patient_reference(p) if p else None
    condition_names = []
    for condition in _conditions(conditions):
        subject = normalize_reference(condition.get("subject") or condition.get("patient"), "Patient")
        if own and subject and subject != own:
            continue                                   # another patient's record: never in this prompt
        if _is_current(condition):
            condition_names.append(_concept_text(condition.get("code")))

    reasons = read_order(sr).reason_texts if sr else ()
    return ClinicalContext(
        age_years=age_in_years(p.get("birthDate"), today) if p else None,
        sex=_sex(p.get("gender")) if p else None,
        reason="; ".join(reasons) or None,
        conditions=_dedupe(condition_names),
        care_setting=_care_setting(enc),
        prior_study_date=_as_date(prior_study_date, "prior_study_date"),
    )
