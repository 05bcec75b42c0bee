"""FHIR out: the AI draft as an R4 Bundle (DiagnosticReport + Device + Provenance).

What an EHR can file, and why the DiagnosticReport is self-contained
--------------------------------------------------------------------
A CDS Hooks ``create`` action carries exactly one resource, and most EHRs file only that. So the
DiagnosticReport holds everything a reader needs without the rest of the Bundle:

- one Observation per mentioned finding, **contained** and listed in ``result``;
- the AI Device, **contained** too (id ``ai-device``). R4 ``DiagnosticReport.performer`` and
  ``resultsInterpreter`` cannot point at a Device, so the report points at it through this
  project's extension (`codes.EXT_AI_DEVICE`), and each Observation through the standard
  ``Observation.device``. The reference from the extension also keeps the contained Device
  referenced when no finding was mentioned (FHIR's dom-3);
- ``meta.security`` AIAST (HL7 AI Transparency) on the report, which covers what it contains
  (FHIR's dom-5 forbids security labels on contained resources), ``status: preliminary``, a
  conclusion that starts with the draft disclaimer, and the same lines as generated narrative.

The Provenance is not contained: a Provenance describes its target from outside, and a
contained one is pointless to EHRs that file only the report. It is a separate Bundle entry, as
is a second copy of the Device for it to point at. An EHR that accepts the whole Bundle (e.g. as
a transaction, after changing ``type``) gets both; one that files only the report still has the
label, the device and the disclaimer.

Identifiers and references. The Bundle is a ``collection``; entries have ``urn:uuid`` fullUrls
derived from ``draft_id`` (uuid5), and the Provenance points at entries by those. No patient
identifiers are written other than the references the EHR gave (``Patient/<id>``,
``Encounter/<id>``). ``basedOn`` names the order only when its id looks stable: an R4
ServiceRequest with a plain FHIR id (Bundle-local ``urn:uuid`` ids are skipped; `read_order`
already drops them). Draft orders at order-select may still be renumbered by the EHR after
signing; CDS_HOOKS.md §3.4 advises not to depend on them, so cds_hooks may pass ``order=None``
(or an OrderInfo without ``id``) for those.

Observation values use DICOM CID 240 "Present-Absent" (SNOMED 52101004 Present, 2667000
Absent, 373068000 Undetermined for uncertain findings). A per-finding model score, when given,
is a component: the model's P("Yes") to that finding's yes/no question, a probability (UCUM 1).
"""
from __future__ import annotations

import base64
import copy
import html
import re
import uuid
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from typing import Any, Mapping

from prompts.compare import Comparison
from prompts.findings import FINDING_NAMES, Finding, Findings

from fhir_mapping import codes
from fhir_mapping.errors import FhirMappingError
from fhir_mapping.r4 import fhir_string
from fhir_mapping.read import OrderInfo

DISCLAIMER = "AI-generated draft for clinician review — not a final report."
# an unfinished text says nothing of what came after the cut: no "no finding" conclusion from it
TRUNCATED_NOTE = ("Incomplete: the AI report stopped at the generation length limit before it finished; "
                  "findings after the cut are missing, and no normal conclusion is drawn.")
EVIDENCE_MAX_CHARS = 200


def _capped(text: str, limit: int = EVIDENCE_MAX_CHARS) -> str:
    """At most ``limit`` characters, cut at a word boundary with an ellipsis (never a whole report)."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1].rsplit(" ", 1)[0] or text[:limit - 1]
    return cut.rstrip(" ,;:") + "…"
REPORT_TITLE = "AI draft chest radiograph report (not reviewed)"
DEVICE_ID = "ai-device"
# Fixed namespace for the uuid5 fullUrls: the same draft_id always gives the same Bundle.
_NAMESPACE = uuid.UUID("8d0f5f0e-3b7a-5c1e-9a59-2f4c6b1d7e30")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_REFERENCE = {"Patient": re.compile(r"Patient/[A-Za-z0-9\-.]{1,64}"),
              "Encounter": re.compile(r"Encounter/[A-Za-z0-9\-.]{1,64}")}
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _bad(message: str) -> FhirMappingError:
    return FhirMappingError(message, code="invalid-draft-input", status=500)


@dataclass(frozen=True)
class DraftInputs:
    """Everything the draft says, checked when constructed.

    ``model`` is the generation result's identity: {"name", "revision", "dtype", "quantization",
    "prompt_id", "prompt_version"}. ``issued`` must be timezone-aware (FHIR instant); it is written
    to the second. ``scores`` maps finding names to P("Yes") in [0, 1]. ``view_count`` (number of
    views in the study, when known) picks the fallback LOINC code; None means the single view read.
    """

    report_text: str
    findings: Findings
    study_instance_uid: str
    accession_number: str | None
    study_date: date | None
    view_position: str | None
    order: OrderInfo | None
    patient_reference: str | None
    encounter_reference: str | None
    model: Mapping[str, Any]
    issued: datetime
    draft_id: str
    scores: Mapping[str, float] | None = None
    view_count: int | None = None
    finish_reason: str = "eos"      # "length": the report stopped at the token cap (an unfinished text)

    def __post_init__(self):
        if not isinstance(self.report_text, str):
            raise _bad(f"report_text must be a string, got {type(self.report_text).__name__}")
        if not isinstance(self.findings, Findings):
            raise _bad(f"findings must be prompts.Findings, got {type(self.findings).__name__}")
        uid = self.study_instance_uid
        if not isinstance(uid, str) or len(uid) > 64 or not _UID.fullmatch(uid):
            raise _bad(f"study_instance_uid {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
        if self.study_date is not None and not isinstance(self.study_date, date):
            raise _bad(f"study_date must be a datetime.date, got {type(self.study_date).__name__}")
        for value, kind in ((self.patient_reference, "Patient"), (self.encounter_reference, "Encounter")):
            if value is not None and not (isinstance(value, str) and _REFERENCE[kind].fullmatch(value)):
                raise _bad(f"{kind.lower()}_reference {value!r} is not of the form '{kind}/<id>'")
        if not isinstance(self.model, Mapping) or not str(self.model.get("name") or "").strip():
            raise _bad("model must be the generation's identity dict with at least a 'name' "
                       "(name, revision, dtype, quantization, prompt_id, prompt_version)")
        if not isinstance(self.issued, datetime) or self.issued.utcoffset() is None:
            raise _bad(f"issued {self.issued!r} must be a timezone-aware datetime, e.g. datetime.now(timezone.utc)")
        if not isinstance(self.draft_id, str) or not self.draft_id.strip():
            raise _bad(f"draft_id {self.draft_id!r} must be a non-empty string (e.g. a UUID)")
        for name, score in (self.scores or {}).items():
            if name not in FINDING_NAMES:
                raise _bad(f"scores has unknown finding {name!r}; known: {', '.join(FINDING_NAMES)}")
            if not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
                raise _bad(f"score for {name} is {score!r}; expected a probability in [0, 1]")
        if self.finish_reason not in ("eos", "length"):
            raise _bad(f"finish_reason {self.finish_reason!r} must be 'eos' or 'length'")
        if self.view_count is not None and (not isinstance(self.view_count, int) or self.view_count < 1):
            raise _bad(f"view_count {self.view_count!r} must be a positive integer or None")


def _fhir_safe(inputs: DraftInputs) -> DraftInputs:
    """The same inputs with every free-text value made a valid FHIR string (`r4.fhir_string`).

    Model output can hold control characters (the tiny random model writes \\x0b and \\x1f; a
    real one can write NBSP or a lone surrogate), and so can EHR text. Cleaning the inputs once,
    here, covers every element they reach (notes, conclusion, narrative, presentedForm, Device).
    Evidence spans are left as they are: they index the raw report text, which the caller keeps.
    """
    def clean(value):
        """Cleaned text; None when nothing readable is left (an optional element is then omitted)."""
        if not isinstance(value, str):
            return value
        value = fhir_string(value)
        return value if value.strip() else None

    items = tuple(replace(f, evidence=clean(f.evidence), severity=clean(f.severity)) for f in inputs.findings)
    order = inputs.order
    if order is not None:
        order = replace(order, text=clean(order.text),
                        codings=tuple((fhir_string(system), fhir_string(code), clean(display))
                                      for system, code, display in order.codings))
    return replace(inputs, report_text=fhir_string(inputs.report_text), findings=Findings(items),
                   accession_number=clean(inputs.accession_number), view_position=clean(inputs.view_position),
                   model={key: clean(value) for key, value in inputs.model.items()}, order=order)


# --- formatting helpers ---------------------------------------------------------------------------------
def _instant(value: datetime) -> str:
    """FHIR instant to the second; UTC as "Z" (what the R4B models dump, so it round-trips)."""
    value = value.replace(microsecond=0)
    if value.utcoffset().total_seconds() == 0:
        return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat() + "Z"
    return value.isoformat()


def _date_time(value: date) -> str:
    """FHIR dateTime of the study: a date, or a full instant when a timezone-aware datetime is given."""
    if isinstance(value, datetime):
        return _instant(value) if value.utcoffset() is not None else value.date().isoformat()
    return value.isoformat()


def _full_url(draft_id: str, what: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{draft_id}/{what}')}"


def _model_label(model: Mapping[str, Any]) -> str:
    """One line naming the model, revision, quantization and prompt: it travels with every output."""
    name = str(model["name"])
    quantization = model.get("quantization")
    details = [f"revision {model.get('revision') or 'unpinned'}",
               "unquantized" if quantization in (None, "none") else f"{quantization} quantization"]
    if model.get("dtype"):
        details.append(str(model["dtype"]))
    return f"{name} ({', '.join(details)}); prompt {_prompt_key(model)}"


def _prompt_key(model: Mapping[str, Any]) -> str:
    pid, version = model.get("prompt_id"), model.get("prompt_version")
    return f"{pid}.{version}" if pid and version else str(pid or "unknown")


def _finding_phrase(finding: Finding, code: codes.FindingCode) -> str:
    qualifiers = [q for q in (finding.laterality, finding.severity) if q]
    return f"{code.text} ({', '.join(qualifiers)})" if qualifiers else code.text


def _concept(coding: dict, text: str | None = None) -> dict:
    out: dict[str, Any] = {"coding": [coding]}
    if text:
        out["text"] = text
    return out


def _imaging_study_reference(uid: str) -> dict:
    return {"type": "ImagingStudy",
            "identifier": {"system": codes.DICOM_UID, "value": f"urn:oid:{uid}"},
            "display": f"Study {uid}"}


# --- resources --------------------------------------------------------------------------------------------
def _device(model: Mapping[str, Any]) -> dict:
    """The AI device (AI Transparency AI-Device): type Artificial-Intelligence; versions named."""
    versions = [("model", str(model["name"])),
                ("revision", str(model.get("revision") or "unpinned")),
                ("quantization", str(model.get("quantization") or "none")),
                ("dtype", str(model.get("dtype") or "")),
                ("prompt", _prompt_key(model)),
                ("scores prompt", str(model.get("scores_prompt") or ""))]
    return {
        "resourceType": "Device",
        "extension": [{"url": codes.EXT_AI_KIND, "valueCodeableConcept": _concept(codes.AI_KIND_VLM)}],
        "deviceName": [{"name": str(model["name"]), "type": "model-name"}],
        "modelNumber": str(model["name"]),
        "type": _concept(codes.AI_DEVICE, "Artificial intelligence"),
        "version": [{"type": {"text": kind}, "value": value} for kind, value in versions if value],
        "note": [{"text": "Generates draft chest radiograph reports for clinician review; "
                          "its outputs are not final reports."}],
    }


def _observation(finding: Finding, inputs: DraftInputs) -> dict:
    code = codes.FINDING_CODES[finding.name]
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "obs-" + finding.name.replace("_", "-"),
        "status": "preliminary",
        "category": [_concept(codes.CATEGORY_IMAGING)],
        "code": _concept(code.coding, code.text.capitalize()),
    }
    if inputs.patient_reference:
        obs["subject"] = {"reference": inputs.patient_reference}
    if inputs.encounter_reference:
        obs["encounter"] = {"reference": inputs.encounter_reference}
    if inputs.study_date is not None:
        obs["effectiveDateTime"] = _date_time(inputs.study_date)
    obs["issued"] = _instant(inputs.issued)
    if finding.presence == "not_mentioned":   # only scored: no presence value to state
        obs["dataAbsentReason"] = _concept(codes.DATA_ABSENT_UNKNOWN, "Not mentioned in the AI-generated report")
    else:
        obs["valueCodeableConcept"] = _concept(codes.PRESENCE[finding.presence], finding.presence)
    if finding.evidence:
        obs["note"] = [{"text": f"Evidence in the AI report: \"{_capped(finding.evidence)}\""}]
    if finding.laterality:
        site = code.site or "side"
        body_site: dict[str, Any] = {"text": f"{finding.laterality} {site}"}
        if code.site == "lung":
            body_site = _concept(codes.LUNG_SITE[finding.laterality], body_site["text"])
        obs["bodySite"] = body_site
    obs["device"] = {"reference": f"#{DEVICE_ID}"}
    components = []
    if finding.severity:
        severity = codes.SEVERITY.get(finding.severity.lower())
        value = _concept(severity, finding.severity) if severity else {"text": finding.severity}
        components.append({"code": _concept(codes.SEVERITY_ATTRIBUTE), "valueCodeableConcept": value})
    score = (inputs.scores or {}).get(finding.name)
    if score is not None:
        components.append({"code": _concept(codes.YES_PROBABILITY),
                           "valueQuantity": {"value": round(float(score), 4), "unit": "probability",
                                             "system": codes.UCUM, "code": "1"}})
    if components:
        obs["component"] = components
    return obs


def _report_code(inputs: DraftInputs) -> dict:
    """The order's code when it has codings; else LOINC by view count (one view: the image read)."""
    order = inputs.order
    if order is not None and order.codings:
        concept: dict[str, Any] = {"coding": [codes.coding(s, c, d) for s, c, d in order.codings]}
    else:
        fallback = codes.XR_CHEST_2_VIEWS if (inputs.view_count or 1) >= 2 else codes.XR_CHEST_SINGLE_VIEW
        concept = {"coding": [fallback]}
    text = order.text if order is not None and order.text else concept["coding"][0].get("display")
    if text:
        concept["text"] = text
    return concept


def _conclusion(inputs: DraftInputs, mentioned: list[Finding]) -> str:
    lines = [DISCLAIMER]
    for presence, label in (("present", "Present"), ("uncertain", "Uncertain"), ("absent", "Absent")):
        items = [_finding_phrase(f, codes.FINDING_CODES[f.name]) for f in mentioned if f.presence == presence]
        if items:
            lines.append(f"{label}: {'; '.join(items)}.")
    no_acute = _no_acute(inputs.findings)
    if no_acute is not None and no_acute.presence == "present" and inputs.finish_reason != "length":
        lines.append("No acute cardiopulmonary abnormality.")
    if inputs.finish_reason == "length":
        lines.append(TRUNCATED_NOTE)
    if len(lines) == 1:
        lines.append("No coded findings could be read from the generated report; see the attached text.")
    view = f" ({inputs.view_position} view)" if inputs.view_position else ""
    lines.append(f"Read from one image{view} by {_model_label(inputs.model)}.")
    return "\n".join(lines)


def _narrative(conclusion: str) -> dict:
    """Generated XHTML narrative: the conclusion's lines, escaped (no model text beyond them)."""
    paragraphs = "".join(f"<p>{html.escape(line, quote=False)}</p>" for line in conclusion.splitlines())
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{paragraphs}</div>'}


def for_patient(report: Mapping[str, Any], *, patient_reference: str,
                encounter_reference: str | None = None) -> dict:
    """A copy of a stored DiagnosticReport draft with ``subject`` (and ``encounter``) set on it and on
    each contained Observation. The input is not modified.

    Raises
    ------
    FhirMappingError
        A reference that is not ``Patient/<id>`` or ``Encounter/<id>``.
    """
    for value, kind in ((patient_reference, "Patient"), (encounter_reference, "Encounter")):
        if value is not None and not (isinstance(value, str) and _REFERENCE[kind].fullmatch(value)):
            raise _bad(f"{kind.lower()}_reference {value!r} is not of the form '{kind}/<id>'")
    refs = {"subject": {"reference": patient_reference}}
    if encounter_reference:
        refs["encounter"] = {"reference": encounter_reference}
    out = {**report, **refs}
    out["contained"] = [{**r, **refs} if r.get("resourceType") == "Observation" else r
                        for r in report.get("contained") or ()]
    if not out["contained"]:
        del out["contained"]
    return out


COMPARISON_PREFIX = "Comparison"
_CHANGE_WORDS = {"new": "new", "resolved": "resolved", "worse": "worse", "better": "better",
                 "unchanged": "unchanged", "not_comparable": "not comparable"}


def comparison_text(comparison: Comparison) -> str:
    """The change of each finding in one sentence (new and worse first); absent-in-both findings left out."""
    parts = []
    for item in comparison.ordered():
        if item.change == "unchanged" and item.current.presence != "present":
            continue
        code = codes.FINDING_CODES.get(item.name)
        if code is None:
            continue
        if item.change in ("worse", "better", "not_comparable"):
            phrase = f"{code.text} ({item.reason})"          # the reason states severity and side
        else:
            phrase = _finding_phrase(item.prior if item.change == "resolved" else item.current, code)
        parts.append(f"{_CHANGE_WORDS[item.change]}: {phrase}")
    return "; ".join(parts) if parts else "no change in the findings the two drafts name"


def with_comparison(report: Mapping[str, Any], comparison: Comparison | None, *,
                    prior_study_instance_uid: str | None = None, prior_date: date | None = None,
                    note: str | None = None) -> dict:
    """A copy of a DiagnosticReport draft that records the comparison with the prior study's AI draft.

    With a ``comparison``: the prior study is referenced in ``imagingStudy`` (its StudyInstanceUID as
    an identifier, like the current one), the conclusion and narrative get a ``Comparison ...`` line
    saying it compares two AI drafts, not the images, and each contained finding Observation gets a
    component ``codes.CHANGE_SINCE_PRIOR`` valued with ``codes.CHANGE[...]`` (plus the standard
    interpretation W/B for worse/better) and a note quoting the prior report's evidence. Without one,
    only the ``Comparison: <note>`` line is added (no prior, prior unreadable, still pending). The
    input is not modified; the result is validated.

    Raises
    ------
    FhirMappingError
        A bad prior StudyInstanceUID, or a result that does not validate.
    """
    from fhir_mapping.r4 import validate_r4

    out = copy.deepcopy(dict(report))
    when = f" of {prior_date.isoformat()}" if prior_date else ""
    if comparison is not None:
        uid = prior_study_instance_uid
        if not isinstance(uid, str) or len(uid) > 64 or not _UID.fullmatch(uid):
            raise _bad(f"prior_study_instance_uid {uid!r} is not a DICOM UID")
        reference = _imaging_study_reference(uid)
        reference["display"] = f"Prior study {uid}{when} (compared)"
        out["imagingStudy"] = [*out.get("imagingStudy", []), reference]
        line = (f"{COMPARISON_PREFIX} with the prior study{when} (two AI drafts compared, not the images): "
                f"{comparison_text(comparison)}.")
        observations = {r.get("id"): r for r in out.get("contained", ()) if r.get("resourceType") == "Observation"}
        for item in comparison:
            obs = observations.get("obs-" + item.name.replace("_", "-"))
            if obs is None:
                continue
            change = codes.CHANGE[item.change]
            obs.setdefault("component", []).append({
                "code": _concept(codes.CHANGE_SINCE_PRIOR, "Change since the prior study (AI drafts compared)"),
                "valueCodeableConcept": _concept(change, fhir_string(f"{_CHANGE_WORDS[item.change]} (prior{when})"
                                                                     f": {item.reason}"))})
            if item.change in codes.CHANGE_INTERPRETATION:
                obs["interpretation"] = [_concept(codes.CHANGE_INTERPRETATION[item.change])]
            if item.prior_evidence:
                obs.setdefault("note", []).append(
                    {"text": fhir_string(f"Evidence in the prior study's AI report{when}: "
                                         f"\"{_capped(item.prior_evidence)}\"")})
    else:
        line = f"{COMPARISON_PREFIX}: {fhir_string(note or 'none')}"
    lines = str(out.get("conclusion") or DISCLAIMER).splitlines()
    # before the closing "Read from one image ... by <model>." line, so the model line stays last
    at = len(lines) - 1 if len(lines) > 1 and lines[-1].startswith("Read from") else len(lines)
    lines.insert(at, line)
    out["conclusion"] = "\n".join(lines)
    out["text"] = _narrative(out["conclusion"])
    validate_r4(out)
    return out


def _no_acute(findings: Findings) -> Finding | None:
    try:
        return findings["no_acute_finding"]
    except KeyError:
        return None


def _presented_text(inputs: DraftInputs) -> str:
    when = f" of {_date_time(inputs.study_date)}" if inputs.study_date else ""
    view = f", {inputs.view_position} view" if inputs.view_position else ""
    return (f"{DISCLAIMER}\n"
            f"Model: {_model_label(inputs.model)}\n"
            f"Study {inputs.study_instance_uid}{when}{view}\n\n"
            f"{inputs.report_text.strip()}\n"
            + (f"\n[{TRUNCATED_NOTE}]\n" if inputs.finish_reason == "length" else ""))


def _diagnostic_report(inputs: DraftInputs, report_url: str) -> dict:
    mentioned = [f for f in inputs.findings.mentioned() if f.name in codes.FINDING_CODES]
    # one Observation per mentioned finding, and per finding only the yes/no question scored
    scored = [f for f in inputs.findings if f.presence == "not_mentioned" and f.name in (inputs.scores or {})
              and f.name in codes.FINDING_CODES]
    observations = [_observation(f, inputs) for f in mentioned + scored]
    device = {"resourceType": "Device", "id": DEVICE_ID,
              **{k: v for k, v in _device(inputs.model).items() if k != "resourceType"}}

    identifiers = []
    if inputs.accession_number and inputs.accession_number.strip():
        identifiers.append({"type": _concept(codes.IDENTIFIER_TYPE_ACSN),
                            "value": inputs.accession_number.strip()})
    identifiers.append({"system": codes.URN_IETF_RFC_3986, "value": report_url})

    conclusion = _conclusion(inputs, mentioned)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"security": [codes.AIAST]},
        "text": _narrative(conclusion),
        "contained": [device, *observations],
        "extension": [{"url": codes.EXT_AI_DEVICE, "valueReference": {"reference": f"#{DEVICE_ID}"}}],
        "identifier": identifiers,
    }
    order = inputs.order
    if order is not None and order.id and order.resource_type == "ServiceRequest" and _ID.fullmatch(order.id):
        report["basedOn"] = [{"reference": f"ServiceRequest/{order.id}"}]
    report["status"] = "preliminary"
    report["category"] = [{"coding": [codes.CATEGORY_RAD, codes.CATEGORY_RAD_LOINC]}]
    report["code"] = _report_code(inputs)
    if inputs.patient_reference:
        report["subject"] = {"reference": inputs.patient_reference}
    if inputs.encounter_reference:
        report["encounter"] = {"reference": inputs.encounter_reference}
    if inputs.study_date is not None:
        report["effectiveDateTime"] = _date_time(inputs.study_date)
    report["issued"] = _instant(inputs.issued)
    report["imagingStudy"] = [_imaging_study_reference(inputs.study_instance_uid)]
    if observations:
        report["result"] = [{"reference": f"#{o['id']}", "display": o["code"]["text"]} for o in observations]
    report["conclusion"] = conclusion

    conclusion_codes = [_concept(codes.FINDING_CODES[f.name].coding, _finding_phrase(f, codes.FINDING_CODES[f.name]))
                        for f in mentioned if f.presence == "present"]
    no_acute = _no_acute(inputs.findings)
    if no_acute is not None and no_acute.presence == "present" and inputs.finish_reason != "length":
        conclusion_codes.append(_concept(codes.NO_ACUTE_FINDING.coding, codes.NO_ACUTE_FINDING.text))
    if conclusion_codes:
        report["conclusionCode"] = conclusion_codes
    report["presentedForm"] = [{
        "contentType": "text/plain; charset=utf-8",
        "language": "en",
        "data": base64.b64encode(_presented_text(inputs).encode("utf-8")).decode("ascii"),
        "title": REPORT_TITLE,
        "creation": _instant(inputs.issued),
    }]
    return report


def _provenance(inputs: DraftInputs, report_url: str, device_url: str) -> dict:
    """AI Transparency AI-Provenance: the AI device authored the report (CREATE, reason AIAST)."""
    return {
        "resourceType": "Provenance",
        "target": [{"reference": report_url}],
        "recorded": _instant(inputs.issued),
        "reason": [_concept(codes.AIAST)],
        "activity": _concept(codes.ACTIVITY_CREATE),
        "agent": [{
            "type": _concept(codes.AGENT_AUTHOR),
            "role": [_concept(codes.AI_DEVICE)],
            "who": {"reference": device_url, "display": str(inputs.model["name"])},
        }],
        "entity": [{"role": "source", "what": _imaging_study_reference(inputs.study_instance_uid)}],
    }


def build_draft(inputs: DraftInputs) -> dict:
    """Build the AI draft Bundle (R4 JSON, type "collection").

    Parameters
    ----------
    inputs : DraftInputs

    Returns
    -------
    dict
        ``{"resourceType": "Bundle", "type": "collection", "entry": [DiagnosticReport, Device,
        Provenance]}``; the DiagnosticReport is first and self-contained (see the module docstring).
        Validated with the pinned R4 models before it is returned.

    Raises
    ------
    FhirMappingError
        ``invalid-fhir`` if the Bundle does not validate (a bug here, not in the input).
    """
    from fhir_mapping.r4 import validate_r4

    if not isinstance(inputs, DraftInputs):
        raise _bad(f"build_draft takes DraftInputs, got {type(inputs).__name__}")
    inputs = _fhir_safe(inputs)
    report_url = _full_url(inputs.draft_id, "DiagnosticReport")
    device_url = _full_url(inputs.draft_id, "Device")
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": codes.URN_IETF_RFC_3986, "value": _full_url(inputs.draft_id, "Bundle")},
        "type": "collection",
        "timestamp": _instant(inputs.issued),
        "entry": [
            {"fullUrl": report_url, "resource": _diagnostic_report(inputs, report_url)},
            {"fullUrl": device_url, "resource": _device(inputs.model)},
            {"fullUrl": _full_url(inputs.draft_id, "Provenance"),
             "resource": _provenance(inputs, report_url, device_url)},
        ],
    }
    validate_r4(bundle)
    return bundle
