"""The prior study of a chest radiograph: the patient's most recent earlier CR/DX chest study (QIDO-RS).

Rules, in order:

1. Same DICOM PatientID as the current study (exact), StudyDate strictly before the current
   StudyDate and at most ``max_days`` before it (a QIDO-RS date range, re-checked here).
2. Not the current study, and not a study whose StudyDescription names no chest word when it is
   stated (a hand or knee CR of the same patient is not a prior); BodyPartExamined is checked per
   instance by :func:`select_frontal`, whose rules choose the prior's frontal image too.
3. Newest first; a study with no frontal chest image (lateral only, another body part) is passed
   over for the next older one, at most ``MAX_CANDIDATES`` studies.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from .errors import ImagingError, NoFrontalRadiograph, StudyNotFound
from .locate import locate_studies
from .select import CHEST_BODY_PARTS, select_frontal
from .source import ImageSource
from .values import Selection, StudyMatch

#: Words of a StudyDescription that say "chest" (upper-case substrings), besides the body parts.
CHEST_DESCRIPTION_WORDS = CHEST_BODY_PARTS + ("CXR", "PULM", "RIB", "STERN")
#: Earlier studies tried at most (each costs a series and an instance query).
MAX_CANDIDATES = 5


class PriorUnknown(ImagingError):
    """The current study lacks what finding its prior needs (its StudyDate or its PatientID in the PACS)."""

    code = "prior_unknown"
    http_status = 422


@dataclass(frozen=True)
class Prior:
    """The prior study and the frontal image of it that an analysis reads."""

    study: StudyMatch
    selection: Selection


def is_chest_description(description: str | None) -> bool:
    """False only for a stated StudyDescription without a chest word ("XR HAND"); True when absent."""
    if not description or not description.strip():
        return True
    text = description.upper()
    return any(word in text for word in CHEST_DESCRIPTION_WORDS)


def find_prior(source: ImageSource, study: StudyMatch, *, max_days: int = 365) -> Prior | None:
    """The patient's most recent earlier CR/DX chest study within ``max_days``, with its frontal image.

    Parameters
    ----------
    source
        A DICOMweb or folder source.
    study
        The current study, as found by :func:`locate_studies` (it carries the PACS's PatientID and
        StudyDate; the PatientID is never logged or put in a message).
    max_days
        How far back a prior may be, in days (``CXR_CDS_PRIOR_MAX_DAYS``).

    Returns
    -------
    Prior or None
        None when no earlier chest study with a frontal CR/DX image lies within ``max_days``.

    Raises
    ------
    PriorUnknown
        The current study has no StudyDate or no PatientID, so "earlier" or "same patient" cannot be told.
    ImagingUnavailable
        The source failed.
    """
    if max_days < 1:
        raise ValueError(f"max_days must be at least 1, got {max_days}")
    if study.study_date is None:
        raise PriorUnknown(f"study {study.study_instance_uid} has no StudyDate in the PACS, so no earlier study "
                           "can be told apart; compare with the patient's prior images in the PACS viewer")
    if not study.patient_id:
        raise PriorUnknown(f"study {study.study_instance_uid} has no PatientID in the PACS, so the patient's "
                           "earlier studies cannot be searched; compare with the prior images in the PACS viewer")
    last = study.study_date - timedelta(days=1)
    first = study.study_date - timedelta(days=max_days)
    candidates = [s for s in locate_studies(source, patient_id=study.patient_id, date_range=(first, last))
                  if s.study_instance_uid != study.study_instance_uid and s.study_date is not None
                  and first <= s.study_date < study.study_date and is_chest_description(s.description)]
    for candidate in candidates[:MAX_CANDIDATES]:
        try:
            return Prior(study=candidate, selection=select_frontal(source, candidate))
        except (NoFrontalRadiograph, StudyNotFound):
            continue            # lateral only, another body part, or emptied: the next older study
    return None
