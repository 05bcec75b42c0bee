"""Choose the one frontal chest radiograph of a study, from metadata only (no pixels).

The rules are data, read top to bottom:

* ``STUDY_EXCLUSIONS``: what a PACS study may hold that is never the model's input (structured
  reports and dose reports, presentation states, secondary captures, other modalities, localisers,
  other body parts). ``FILE_EXCLUSIONS`` is the laxer set for a file a user hands us explicitly.
* ``VIEW_RULES``: how to tell the view: ``ViewPosition``, then ``ViewCodeSequence``, then the
  free-text ``SeriesDescription``/``ProtocolName``, then ``PatientOrientation`` and ``ImageLaterality``.
* ``VIEW_RANK``: which views are acceptable and in what order (PA before AP).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from .errors import NoFrontalRadiograph, StudyNotFound
from .source import ImageSource, copy_element, uid_of
from .values import Selection, StudyMatch

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")       # DR: not a DICOM term, but vendors send it
NON_RADIOGRAPH_MODALITIES = ("CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "ES", "OP", "OPT", "SR", "PR",
                             "KO", "SEG", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTIMAGE", "ECG", "DOC")
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX")  # matched as substrings: "CHEST_PA", "PORT CHEST"
SECONDARY_CAPTURE_CLASSES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1",
                             "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
                             "1.2.840.10008.5.1.4.1.1.7.4")
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
#: Label of a series or instance QIDO returned without a usable (single, non-empty) UID.
NO_UID = "NO UID"

#: Instance attributes the rules read (QIDO-RS includefield).
INSTANCE_FIELDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "ViewPosition",
                   "ImageLaterality", "Laterality", "PatientOrientation", "ImageType", "BodyPartExamined",
                   "SeriesDescription", "ProtocolName", "PresentationIntentType", "Rows", "Columns",
                   "InstanceNumber", "SeriesNumber", "ViewCodeSequence")


@dataclass(frozen=True)
class Exclusion:
    """Exclude an instance when ``attribute`` matches; ``label`` None means "say the value"."""

    attribute: str
    kind: str                     # "in" | "not_in" | "contains" | "lacks_substring"
    values: tuple[str, ...]
    label: str | None = None

    def applies(self, ds: Dataset) -> str | None:
        raw = ds.get(self.attribute)
        if raw is None or raw == "":
            return None           # tolerant reading: an absent attribute excludes nothing
        items = [str(v).strip().upper() for v in (raw if _is_multi(raw) else [raw])]
        value = items[0] if items else ""
        if not value:
            return None
        hit = {
            "in": value in self.values,
            "not_in": value not in self.values,
            "contains": any(v in self.values for v in items),
            "lacks_substring": not any(s in " ".join(items) for s in self.values),
        }[self.kind]
        return (self.label or value) if hit else None


STUDY_EXCLUSIONS: tuple[Exclusion, ...] = (
    Exclusion("SOPClassUID", "in", SECONDARY_CAPTURE_CLASSES, "SC"),
    Exclusion("Modality", "in", ("SR",), "SR"),
    Exclusion("Modality", "in", ("PR",), "PR"),
    Exclusion("Modality", "not_in", RADIOGRAPH_MODALITIES),
    Exclusion("ImageType", "contains", ("LOCALIZER",), "LOCALIZER"),
    Exclusion("BodyPartExamined", "lacks_substring", CHEST_BODY_PARTS),
)

FILE_EXCLUSIONS: tuple[Exclusion, ...] = (
    Exclusion("Modality", "in", NON_RADIOGRAPH_MODALITIES),
    Exclusion("ImageType", "contains", ("LOCALIZER",), "LOCALIZER"),
    Exclusion("BodyPartExamined", "lacks_substring", CHEST_BODY_PARTS),
)


@dataclass(frozen=True)
class ViewRule:
    """``pattern`` (regex, upper-case text) found in ``attribute`` means ``view``."""

    attribute: str
    pattern: str
    view: str


_DESCRIPTION_RULES = (
    (r"DECUB", "DECUBITUS"),
    (r"\bOBL(IQUE)?\b|\b[LR][AP]O\b", "OBLIQUE"),
    (r"\bLAT(ERAL)?\b|\b[LR]L\b", "LATERAL"),
    (r"\bP\.?A\b|POSTERO.?ANTERIOR", "PA"),
    (r"\bA\.?P\b|ANTERO.?POSTERIOR|\bPORTABLE\b|\bSUPINE\b|\bBEDSIDE\b", "AP"),
    (r"\bFRONTAL\b", "FRONTAL"),
)

VIEW_RULES: tuple[ViewRule, ...] = (
    ViewRule("ViewPosition", r"PA", "PA"),
    ViewRule("ViewPosition", r"AP", "AP"),
    ViewRule("ViewPosition", r"LL|RL|LAT|LATERAL", "LATERAL"),
    ViewRule("ViewPosition", r"[LR]LD|DECUB.*", "DECUBITUS"),
    ViewRule("ViewPosition", r"[LR]LO|[LR]?OBL.*", "OBLIQUE"),
    # CID 4010 (DX View): legacy SNOMED-RT codes and their code meanings
    ViewRule("ViewCodeSequence", r"R-10214|POSTERO-?ANTERIOR", "PA"),
    ViewRule("ViewCodeSequence", r"R-10206|ANTERO-?POSTERIOR", "AP"),
    ViewRule("ViewCodeSequence", r"R-1023[26]|LATERAL", "LATERAL"),
    *(ViewRule("SeriesDescription", p, v) for p, v in _DESCRIPTION_RULES),
    *(ViewRule("ProtocolName", p, v) for p, v in _DESCRIPTION_RULES),
    # PatientOrientation row direction: L/R across the image is frontal, A/P is lateral
    ViewRule("PatientOrientation", r"[LR]", "FRONTAL"),
    ViewRule("PatientOrientation", r"[AP]", "LATERAL"),
    ViewRule("ImageLaterality", r"B", "FRONTAL"),
)

#: Acceptable views, best first. Anything else (LATERAL, OBLIQUE, DECUBITUS) is rejected.
VIEW_RANK = {"PA": 0, "AP": 1, "FRONTAL": 2, "UNKNOWN": 3}
_FRONTAL = {"PA", "AP", "FRONTAL"}


@dataclass(frozen=True)
class Verdict:
    """What the rules make of one instance."""

    label: str              # what we say we found: "PA", "LL", "LATERAL", "CT", "SC", "LOCALIZER", "KNEE"
    view: str | None        # an acceptable view (a VIEW_RANK key), or None when rejected
    evidence: str           # e.g. "ViewPosition 'PA'"
    excluded: bool = False  # rejected by an exclusion rule (not by its view)


def _is_multi(value) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _text(ds: Dataset, attribute: str) -> str:
    raw = ds.get(attribute)
    if raw is None:
        return ""
    if attribute == "ViewCodeSequence":
        item = raw[0] if len(raw) else Dataset()
        return f"{item.get('CodeValue', '')} {item.get('CodeMeaning', '')}".strip().upper()
    if attribute == "PatientOrientation":
        first = raw[0] if _is_multi(raw) and len(raw) else raw
        return str(first or "").strip().upper()[:1]
    return str(raw).strip().upper()


def classify(ds: Dataset, exclusions: Sequence[Exclusion] = STUDY_EXCLUSIONS) -> Verdict:
    """Apply the exclusion table, then the view rules, to one instance's metadata."""
    for rule in exclusions:
        label = rule.applies(ds)
        if label is not None:
            return Verdict(label, None, f"{rule.attribute} {str(ds.get(rule.attribute))!r}", excluded=True)
    attributes = list(dict.fromkeys(r.attribute for r in VIEW_RULES))
    for attribute in attributes:
        text = _text(ds, attribute)
        if not text:
            continue
        full = attribute in ("ViewPosition", "PatientOrientation", "ImageLaterality")
        views = [r.view for r in VIEW_RULES if r.attribute == attribute
                 and (re.fullmatch(r.pattern, text) if full else re.search(r.pattern, text))]
        if not views:
            continue
        views = list(dict.fromkeys(views))
        if any(v in _FRONTAL for v in views) and any(v not in _FRONTAL for v in views):
            continue              # "PA AND LAT": ambiguous, look at the next attribute
        view = views[0] if len(views) == 1 or views[0] not in _FRONTAL else "FRONTAL"
        evidence = f"{attribute} {text!r}"
        label = text if attribute == "ViewPosition" else view
        return Verdict(label, view if view in VIEW_RANK else None, evidence)
    return Verdict("UNKNOWN", "UNKNOWN", "no ViewPosition, view code, description or orientation")


def _merge(instance: Dataset, series: Dataset) -> Dataset:
    """Instance attributes, completed with series-level ones QIDO returned only for the series."""
    merged = Dataset()
    merged.update(instance)          # a new element map: never write into a source's cached header
    instance = merged
    for keyword in ("Modality", "SeriesDescription", "BodyPartExamined", "SeriesNumber", "SeriesInstanceUID"):
        if keyword in series and (keyword not in instance or instance.get(keyword) in (None, "")):
            copy_element(series, instance, keyword)    # as an element: a malformed value is not re-validated
    return instance


def _sort_key(ds: Dataset, verdict: Verdict) -> tuple:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    processing = (str(ds.get("SOPClassUID", "")) == DX_FOR_PROCESSING
                  or str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING")
    def num(keyword: str) -> int:
        try:
            return int(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            return 0
    return (VIEW_RANK[verdict.view], processing, "DERIVED" in image_type, -num("Rows") * num("Columns"),
            num("SeriesNumber"), num("InstanceNumber"), str(ds.get("SOPInstanceUID", "")))


def select_frontal(source: ImageSource, study: StudyMatch | str) -> Selection:
    """Choose the frontal chest CR/DX instance of ``study`` from QIDO-RS metadata (no pixels).

    PA is preferred over AP, then a frontal image whose PA/AP is unknown, then an image with no view
    information at all. Series of other modalities are rejected from series metadata alone; instance
    metadata (WADO-RS) is read only for instances whose QIDO answer lacks ``ViewPosition``.

    Parameters
    ----------
    source
        A DICOMweb or folder source.
    study
        A :class:`StudyMatch` or a StudyInstanceUID.

    Returns
    -------
    Selection
        The chosen series/instance, its view, the reason, and the label of every instance considered.

    Raises
    ------
    StudyNotFound
        The study has no series in the source.
    NoFrontalRadiograph
        Nothing acceptable; the message lists what was found ("found LL, LATERAL").
    ImagingUnavailable
        The source failed.
    """
    study_uid = study.study_instance_uid if isinstance(study, StudyMatch) else str(study)
    series_list = source.search_for_series(study_uid)
    if not series_list:
        raise StudyNotFound(f"study {study_uid} has no series in {source.name}", code="study_empty")

    considered: list[str] = []
    candidates: list[tuple[tuple, str, str, Verdict]] = []   # (sort key, series UID, SOP UID, verdict)
    for series in series_list:
        # A whole series of another modality (CT, SR, PR ...) is rejected without listing its instances.
        verdict = classify(series)
        if verdict.excluded and "Modality" in verdict.evidence:
            considered.append(verdict.label)
            continue
        series_uid = uid_of(series, "SeriesInstanceUID")
        if series_uid is None:
            considered.append(NO_UID)          # cannot be retrieved without it (a PACS quirk)
            continue
        for instance in source.search_for_instances(study_uid, series_uid, INSTANCE_FIELDS):
            instance = _merge(instance, series)
            sop_uid = uid_of(instance, "SOPInstanceUID")
            if sop_uid is None:
                considered.append(NO_UID)
                continue
            verdict = classify(instance)
            if not verdict.excluded and not _text(instance, "ViewPosition"):
                # QIDO rarely returns sequences (Orthanc omits ViewCodeSequence): read this instance's
                # metadata before falling back to free text.
                meta = source.retrieve_instance_metadata(study_uid, series_uid, sop_uid)
                instance = _merge(meta, series)
                verdict = classify(instance)
            considered.append(verdict.label)
            if verdict.view is not None:
                candidates.append((_sort_key(instance, verdict), series_uid, sop_uid, verdict))

    found = ", ".join(dict.fromkeys(considered)) or "no images"
    if not candidates:
        raise NoFrontalRadiograph(f"study {study_uid}: no frontal CR/DX image; found {found}")
    candidates.sort(key=lambda c: c[0])
    _, series_uid, sop_uid, verdict = candidates[0]
    reason = f"{verdict.view} by {verdict.evidence}"
    if verdict.view == "UNKNOWN":
        reason = "view not recorded (no ViewPosition, view code, description or orientation); assumed frontal"
    if len(considered) > 1:
        reason += f"; chosen among {len(considered)} instances ({found})"
    return Selection(
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        view=verdict.view,
        reason=reason,
        considered=tuple(considered),
    )
