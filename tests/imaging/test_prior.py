"""The prior study: the patient's most recent earlier CR/DX chest study within max_days, its frontal image.

Runs against a real Orthanc (QIDO-RS on loopback) and the folder source (``store_study``).
"""
from __future__ import annotations

import uuid
from datetime import date

import pytest

from imaging import PriorUnknown, StudyMatch, find_prior, locate_studies
from tests.support.synthetic_cxr import make_ct, make_cxr, make_study


def _patient() -> str:
    return f"PRI{uuid.uuid4().hex[:10]}"


def _current(source, study) -> StudyMatch:
    [match] = locate_studies(source, study_instance_uid=study[0].StudyInstanceUID)
    return match


def _patient_studies(patient: str):
    """Current PA+LL (2026-11-28); the chest prior AP+LL (2026-11-20, CR); newer but unusable studies
    between them (a hand CR, a lateral-only chest, a CT); one chest study older than a year."""
    return {
        "current": make_study(("PA", "LL"), patient_id=patient, study_date=date(2026, 11, 28), rows=96, cols=80),
        "prior": make_study(("LL", "AP"), patient_id=patient, study_date=date(2026, 11, 20), rows=96, cols=80,
                            modality="CR", seed=3),
        "hand": [make_cxr(view="PA", patient_id=patient, study_date=date(2026, 11, 25), rows=96, cols=80,
                          modality="CR", body_part="HAND")],
        "lateral": make_study(("LL",), patient_id=patient, study_date=date(2026, 11, 24), rows=96, cols=80),
        "ct": [make_ct(patient_id=patient, study_date="20261126")],
        "old": make_study(("PA",), patient_id=patient, study_date=date(2025, 6, 1), rows=96, cols=80),
    }


def test_the_most_recent_earlier_chest_study_with_its_frontal_image_is_the_prior(store_study):
    patient = _patient()
    studies = _patient_studies(patient)
    studies["hand"][0].StudyDescription = "XR HAND"
    other_patient = make_study(("PA",), patient_id=_patient(), study_date=date(2026, 11, 27), rows=96, cols=80)
    source = store_study(*[ds for group in studies.values() for ds in group], *other_patient)

    prior = find_prior(source, _current(source, studies["current"]), max_days=365)

    assert prior is not None
    assert prior.study.study_instance_uid == studies["prior"][0].StudyInstanceUID
    assert prior.study.study_date == date(2026, 11, 20)
    # the same rules as the current study's image: the AP instance, not the lateral one
    assert prior.selection.sop_instance_uid == studies["prior"][1].SOPInstanceUID
    assert prior.selection.view == "AP"


def test_a_non_chest_study_is_passed_over_by_its_body_part_even_when_described_as_chest(store_study):
    patient = _patient()
    studies = _patient_studies(patient)          # the hand CR keeps StudyDescription "XR CHEST"
    source = store_study(*studies["current"], *studies["prior"], *studies["hand"])
    prior = find_prior(source, _current(source, studies["current"]))
    assert prior is not None and prior.study.study_instance_uid == studies["prior"][0].StudyInstanceUID


def test_no_prior_within_max_days(store_study):
    patient = _patient()
    studies = _patient_studies(patient)
    source = store_study(*studies["current"], *studies["prior"], *studies["old"])
    current = _current(source, studies["current"])
    assert find_prior(source, current, max_days=7) is None             # 2026-11-20 is 8 days earlier
    assert find_prior(source, current, max_days=8).study.study_date == date(2026, 11, 20)
    # the prior's own prior: the 2025-06-01 study is more than a year before it
    assert find_prior(source, _current(source, studies["prior"]), max_days=365) is None
    assert find_prior(source, _current(source, studies["prior"]), max_days=600).study.study_date == date(2025, 6, 1)


def test_a_study_of_the_same_day_or_later_is_never_the_prior(store_study):
    patient = _patient()
    current = make_study(("PA",), patient_id=patient, study_date=date(2026, 11, 28), rows=96, cols=80)
    same_day = make_study(("PA",), patient_id=patient, study_date=date(2026, 11, 28), study_time="070000",
                          rows=96, cols=80)
    later = make_study(("PA",), patient_id=patient, study_date=date(2026, 12, 2), rows=96, cols=80)
    source = store_study(*current, *same_day, *later)
    assert find_prior(source, _current(source, current)) is None


def test_a_study_without_date_or_patient_id_cannot_have_its_prior_found():
    undated = StudyMatch(study_instance_uid="1.2.3.4", study_date=None, accession_number=None, modalities=("DX",),
                         description=None, patient_id="P1")
    with pytest.raises(PriorUnknown, match=r"study 1\.2\.3\.4 has no StudyDate in the PACS"):
        find_prior(None, undated)
    anonymous = StudyMatch(study_instance_uid="1.2.3.5", study_date=date(2026, 1, 2), accession_number=None,
                           modalities=("DX",), description=None, patient_id=None)
    with pytest.raises(PriorUnknown, match=r"study 1\.2\.3\.5 has no PatientID in the PACS"):
        find_prior(None, anonymous)
