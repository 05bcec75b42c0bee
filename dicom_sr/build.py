"""Pure builder: one stored analysis -> one DICOM Comprehensive SR (TID 1500 Measurement Report).

The content tree, in the standard's terms (PS3.16):

* TID 1500 "Imaging Measurement Report", with TID 1001 observation context whose observer is a
  **device** (TID 1004: device UID, name, manufacturer, model name), and "Procedure reported".
* TID 1600 Image Library: the exact instance read (when its header has what TID 1603 describes).
* "Imaging Measurements": one TID 1501 measurement group per finding the report mentions or the
  model scored, each with a tracking identifier, the finding's SNOMED code ("Finding"), the finding
  site carrying the stated laterality, TID 4019 Algorithm Identification (model name, revision,
  dtype, quantization and prompt versions as parameters), the image read ("Source"), a qualitative
  evaluation *finding code = Present | Absent | Undetermined* (CID 240), a second one for a stated
  severity (CID 3716), and the model's P(yes) as a TID 300 measurement (122157 "Probability").
* "Qualitative Evaluations" container: the generated report text verbatim and the AI-draft notice.

The document is ``PreliminaryFlag`` PRELIMINARY, ``VerificationFlag`` UNVERIFIED and
``CompletionFlag`` PARTIAL: PS3.3 C.17.2 allows only PARTIAL or COMPLETE for the completion flag,
and an AI draft awaiting a clinician's review is not the complete content of the study's report.
UIDs are derived from the analysis id, so the same analysis always gives the same SR.
"""
from __future__ import annotations

import importlib.metadata
import math
import unicodedata
import uuid

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from prompts import Finding

from . import codes
from .values import SrInputs

SERIES_NUMBER = 7701                 # high enough to sort after the acquisition series in viewers
SERIES_DESCRIPTION = "AI DRAFT for clinician review - not a final report"
MANUFACTURER = "cxr-cds"
DRAFT_NOTICE = ("AI-generated draft for clinician review - not a final report. It has not been verified "
                "by a radiologist; do not use it for diagnosis without review.")
COMPLETION_DESCRIPTION = "AI-generated draft awaiting clinician review"
_MAX_LO = 64


#: Namespace of the name-based UUIDs behind every UID the SR mints (fixed: changing it changes all UIDs).
UID_NAMESPACE = uuid.UUID("6f0d3c1e-5b0a-4c61-9a55-2f3d7f0c9e11")


def _uid_for(*parts: str) -> str:
    """A UUID-derived UID (PS3.5 B.2, ``2.25.<decimal UUID>``) from a name-based UUID (RFC 4122 v5).

    pydicom's ``generate_uid(prefix=None, ...)`` ignores its entropy sources and returns a random
    UUID, so the deterministic UUID is made here.
    """
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '|'.join(('cxr-cds',) + parts)).int}"


def sr_uids(analysis_id: str) -> tuple[str, str]:
    """``(SeriesInstanceUID, SOPInstanceUID)`` of the SR of ``analysis_id``: the same on every call.

    Derived from the analysis id alone, so writing the SR again (a retry, a restart) replaces nothing
    and adds nothing: the PACS sees the same instance.
    """
    return _uid_for("sr-series", analysis_id), _uid_for("sr-instance", analysis_id)


def _text(value: object, *, limit: int | None = None) -> str:
    """Printable text for SR values: control and format characters dropped.

    Without ``limit`` (UT: TEXT content items) line breaks and tabs stay; with it (LO/SH attributes,
    ``limit`` characters at most) they become spaces and "\\", the value separator, becomes "/".
    """
    text = str(value if value is not None else "")
    if limit is not None:
        text = text.replace("\\", "/").replace("\r", " ").replace("\n", " ").replace("\t", " ")
    out = "".join(ch for ch in text if ch in "\n\r\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))
    return out[:limit].strip() if limit is not None else out.strip()


def _severity_code(severity: str) -> Code:
    key = severity.strip().lower().replace(" ", "-")
    known = codes.SEVERITY_VALUES.get(key)
    if known is not None:
        return known
    return Code(codes.SEVERITY_UNLISTED, codes.LOCAL_SCHEME, _text(severity, limit=_MAX_LO) or "unlisted")


def _model_text(model: dict, key: str, default: str = "unknown") -> str:
    value = model.get(key)
    return _text(value, limit=_MAX_LO) if value not in (None, "") else default


def _algorithm(model: dict) -> hd.sr.AlgorithmIdentification:
    """TID 4019: the model as the algorithm, with what changes its output as parameters."""
    parameters = [f"{key}={_model_text(model, key)}" for key in ("dtype", "quantization")]
    prompt = f"{_model_text(model, 'prompt_id')}.{_model_text(model, 'prompt_version')}"
    parameters.append(f"prompt={prompt}")
    if model.get("scores_prompt"):
        parameters.append(f"scores_prompt={_model_text(model, 'scores_prompt')}")
    return hd.sr.AlgorithmIdentification(name=_model_text(model, "name"), version=_model_text(model, "revision"),
                                         parameters=parameters, family=codes.ALGORITHM_FAMILY_AI,
                                         manufacturer=MANUFACTURER)


def _observer(model: dict) -> hd.sr.ObservationContext:
    """TID 1001 with a device observer (TID 1004): this service running that model revision."""
    name, revision = _model_text(model, "name"), _model_text(model, "revision")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid_for("device", name, revision, _model_text(model, "quantization"), _model_text(model, "dtype")),
        name=_text(f"cxr-cds AI draft ({name})", limit=_MAX_LO),
        manufacturer_name=MANUFACTURER,
        model_name=_text(name, limit=_MAX_LO),
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=dcm_codes.DCM.Device,
                                                      observer_identifying_attributes=device))


def _group(inputs: SrInputs, finding: Finding | None, name: str, score: float | None,
           algorithm: hd.sr.AlgorithmIdentification,
           source: hd.sr.SourceImageForMeasurementGroup) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one finding: presence, severity, laterality (as the finding site's), P(yes)."""
    finding_code = codes.FINDING_CODES[name]
    evaluations = []
    sites = None
    if finding is not None and finding.presence in codes.PRESENCE:
        evaluations.append(hd.sr.QualitativeEvaluation(name=finding_code.code, value=codes.PRESENCE[finding.presence]))
        if finding.severity and finding.presence != "absent":
            evaluations.append(hd.sr.QualitativeEvaluation(name=codes.SEVERITY,
                                                           value=_severity_code(finding.severity)))
        if finding.laterality in codes.LATERALITY and finding.presence != "absent":
            sites = [hd.sr.FindingSite(anatomic_location=finding_code.site,
                                       laterality=codes.LATERALITY[finding.laterality])]
    measurements = None
    if score is not None and math.isfinite(score):
        measurements = [hd.sr.Measurement(name=codes.PROBABILITY, value=round(float(score), 4), unit=codes.NO_UNITS,
                                          method=codes.YES_PROBABILITY_METHOD)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid_for("tracking", inputs.analysis_id, name),
                                                     identifier=name),
        finding_type=finding_code.code,
        algorithm_id=algorithm,
        finding_sites=sites,
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
        source_images=[source],
    )


def _nothing_coded_group(inputs: SrInputs, algorithm, source) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1500 needs one measurement group: a report with nothing coded gets one saying so."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid_for("tracking", inputs.analysis_id, "none"),
                                                     identifier="no coded findings"),
        algorithm_id=algorithm,
        source_images=[source],
    )


def _procedure(header: Dataset) -> Code | hd.sr.CodedConcept:
    for item in header.get("ProcedureCodeSequence") or []:
        try:
            return hd.sr.CodedConcept.from_dataset(item)
        except (AttributeError, TypeError, ValueError):
            continue
    return codes.CHEST_IMAGING


def _library_describable(header: Dataset) -> bool:
    """highdicom's TID 1603 entry for a projection radiograph reads these: only then is it built."""
    orientation = header.get("PatientOrientation")
    spacing = header.get("ImagerPixelSpacing")
    return ("Rows" in header and "Columns" in header and orientation is not None and len(orientation) == 2
            and spacing is not None and len(spacing) == 2)


def _notice(inputs: SrInputs) -> str:
    model = inputs.model
    lines = [DRAFT_NOTICE,
             f"Model {_model_text(model, 'name')} revision {_model_text(model, 'revision')} "
             f"({_model_text(model, 'quantization')}, {_model_text(model, 'dtype')}), prompt "
             f"{_model_text(model, 'prompt_id')}.{_model_text(model, 'prompt_version')}; "
             f"analysis {inputs.analysis_id}."]
    if model.get("finish_reason") == "length":
        lines.append("The report stopped at the generation token limit: the text is unfinished.")
    return "\n".join(lines)


def build_sr(inputs: SrInputs) -> Dataset:
    """The Comprehensive SR (TID 1500) of one analysis, in the study of the image it read.

    Parameters
    ----------
    inputs
        The analysis and the read image's header (:class:`SrInputs`).

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sr.ComprehensiveSR`` (a pydicom Dataset with file meta and preamble): Modality
        SR, the source's patient and study attributes, SeriesDescription naming it an AI draft,
        PRELIMINARY / PARTIAL / UNVERIFIED, UIDs from :func:`sr_uids`, dates from ``inputs.created``.
        Building it twice gives equal datasets.
    """
    header = inputs.image_header
    model = dict(inputs.model)
    algorithm = _algorithm(model)
    source = hd.sr.SourceImageForMeasurementGroup(referenced_sop_class_uid=header.SOPClassUID,
                                                  referenced_sop_instance_uid=header.SOPInstanceUID)
    scores = dict(inputs.scores or {})
    by_name = {f.name: f for f in inputs.findings}
    groups = []
    for name in codes.FINDING_CODES:
        finding = by_name.get(name)
        mentioned = finding is not None and finding.presence in codes.PRESENCE
        if name == "no_acute_finding" and not (mentioned and finding.presence == "present"):
            continue          # as in the FHIR draft: "no abnormality: absent" would read as a double negative
        score = scores.get(name)
        score = float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None
        if mentioned or score is not None:
            groups.append(_group(inputs, finding if mentioned else None, name, score, algorithm, source))
    if not groups:
        groups.append(_nothing_coded_group(inputs, algorithm, source))

    report = hd.sr.MeasurementReport(
        observation_context=_observer(model),
        procedure_reported=_procedure(header),
        imaging_measurements=groups,
        referenced_images=[header] if _library_describable(header) else None,
    )
    # TID 1500's "Qualitative Evaluations" container (highdicom builds the rows before it): the
    # report text as the model wrote it, and the notice that it is an unverified AI draft.
    evaluations = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                                             relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    evaluations.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.REPORT_TEXT, value=_text(inputs.report_text) or "(no text generated)",
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
        hd.sr.TextContentItem(name=codes.COMMENT, value=_notice(inputs),
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
    ])
    report[0].ContentSequence.append(evaluations)

    created = inputs.created
    series_uid, sop_uid = sr_uids(inputs.analysis_id)
    sr = hd.sr.ComprehensiveSR(
        evidence=[header],
        content=report[0],
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,          # CompletionFlag PARTIAL (see the module docstring)
        is_final=False,             # PreliminaryFlag PRELIMINARY
        is_verified=False,          # VerificationFlag UNVERIFIED
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=_text(model.get("name") or "unknown", limit=_MAX_LO),
        software_versions=_software_version(),
        content_date=created.date(),
        content_time=created.time().replace(tzinfo=None),
        series_date=created.date(),
        series_time=created.time().replace(tzinfo=None),
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=codes.LOCAL_SCHEME, name=codes.LOCAL_SCHEME_NAME,
            responsible_organization=codes.LOCAL_SCHEME_ORGANIZATION)],
        # UTF-8: the report text is model output; pydicom re-encodes the copied patient attributes
        specific_character_set="ISO_IR 192",
    )
    sr.CompletionFlagDescription = COMPLETION_DESCRIPTION
    # highdicom stamps the instance with the build time; the analysis time keeps rebuilds identical
    sr.InstanceCreationDate, sr.InstanceCreationTime = sr.ContentDate, sr.ContentTime
    for equipment in sr.get("ContributingEquipmentSequence") or []:      # highdicom's own entry, stamped "now"
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = f"{sr.ContentDate}{sr.ContentTime}"
    offset = created.utcoffset()
    if offset is not None:
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        sr.TimezoneOffsetFromUTC = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return sr


def _software_version() -> str:
    try:
        return f"cxr-cds {importlib.metadata.version('cxr-cds')}"
    except importlib.metadata.PackageNotFoundError:
        return "cxr-cds"


__all__ = ["build_sr", "sr_uids", "SERIES_DESCRIPTION", "DRAFT_NOTICE"]
