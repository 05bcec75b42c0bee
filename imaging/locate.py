"""Find the studies for an order or a patient (QIDO-RS study level), newest first."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from pydicom.dataset import Dataset

from .source import ImageSource, uid_of
from .values import StudyMatch

#: ModalitiesInStudy sent for patient-level searches (QIDO list matching uses commas, not backslashes:
#: Orthanc answers nothing for "CR\\DX").
RADIOGRAPH_MODALITIES_QUERY = "CR,DX,DR"
_RADIOGRAPH = {"CR", "DX", "DR"}


def parse_da(value) -> date | None:
    """DICOM DA ("YYYYMMDD") -> date; None when absent or malformed (tolerant reading)."""
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _date_filter(date_range: tuple[date | None, date | None]) -> str:
    lo, hi = date_range
    return f"{lo.strftime('%Y%m%d') if lo else ''}-{hi.strftime('%Y%m%d') if hi else ''}"


def _values(raw) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [v for v in raw.replace(",", "\\").split("\\") if v]
    if isinstance(raw, Iterable):
        return [str(v) for v in raw if str(v)]
    return [str(raw)]


def locate_studies(
    source: ImageSource,
    *,
    study_instance_uid: str | None = None,
    accession_number: str | None = None,
    patient_id: str | None = None,
    date_range: tuple[date | None, date | None] | None = None,
) -> list[StudyMatch]:
    """Studies matching every given criterion, most recent first (an empty list when none).

    A patient-level search (``patient_id``) asks for CR/DX/DR studies only. Every answer is re-checked
    client-side, because some PACS ignore filters they do not support and return everything.

    Parameters
    ----------
    source
        A DICOMweb or folder source.
    study_instance_uid, accession_number, patient_id
        Exact values; at least one is required.
    date_range
        ``(first, last)`` StudyDate bounds, inclusive; either end may be None.

    Returns
    -------
    list of StudyMatch
        Newest first (StudyDate, then StudyTime); studies without a date last.

    Raises
    ------
    ValueError
        No criterion given.
    ImagingUnavailable
        The source failed.
    """
    if not (study_instance_uid or accession_number or patient_id):
        raise ValueError("locate_studies needs study_instance_uid, accession_number or patient_id")
    filters: dict[str, str] = {}
    if study_instance_uid:
        filters["StudyInstanceUID"] = study_instance_uid
    if accession_number:
        filters["AccessionNumber"] = accession_number
    if patient_id:
        filters["PatientID"] = patient_id
        filters["ModalitiesInStudy"] = RADIOGRAPH_MODALITIES_QUERY
    if date_range and (date_range[0] or date_range[1]):
        filters["StudyDate"] = _date_filter(date_range)

    def wanted(ds: Dataset) -> bool:
        # Re-check what came back: a PACS may have ignored any of the filters.
        uid = uid_of(ds, "StudyInstanceUID")
        if uid is None:
            return False         # absent, empty or multi-valued: nothing could retrieve it
        if study_instance_uid and uid != study_instance_uid:
            return False
        if accession_number and str(ds.get("AccessionNumber", "") or "") != accession_number:
            return False
        if patient_id and str(ds.get("PatientID", "") or "") != patient_id:
            return False
        if patient_id:
            modalities = {m.upper() for m in _values(ds.get("ModalitiesInStudy"))}
            if modalities and not modalities & _RADIOGRAPH:
                return False     # absent ModalitiesInStudy: cannot tell, keep it (select decides)
        if date_range:
            found = parse_da(ds.get("StudyDate"))
            lo, hi = date_range
            if found is None or (lo and found < lo) or (hi and found > hi):
                return False
        return True

    seen: dict[str, tuple[tuple, StudyMatch]] = {}
    for ds in source.search_for_studies(filters):
        if not wanted(ds) or uid_of(ds, "StudyInstanceUID") in seen:
            continue
        study_date = parse_da(ds.get("StudyDate"))
        match = StudyMatch(
            study_instance_uid=uid_of(ds, "StudyInstanceUID"),
            study_date=study_date,
            accession_number=str(ds.get("AccessionNumber") or "") or None,
            modalities=tuple(_values(ds.get("ModalitiesInStudy"))),
            description=str(ds.get("StudyDescription") or "") or None,
            patient_id=str(ds.get("PatientID") or "").strip() or None,
        )
        key = (study_date is not None, study_date or date.min, str(ds.get("StudyTime", "") or ""))
        seen[match.study_instance_uid] = (key, match)
    return [m for _, m in sorted(seen.values(), key=lambda km: km[0], reverse=True)]
