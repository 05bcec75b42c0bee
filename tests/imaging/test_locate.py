"""Locating studies by UID, accession, patient + modality + dates; newest first; filters re-checked."""
from __future__ import annotations

import uuid
from datetime import date

import pytest
from pydicom.uid import generate_uid

from imaging import FolderSource, NoFrontalRadiograph, StudyNotFound, find_radiograph, locate_studies
from tests.support.synthetic_cxr import make_ct, make_cxr, make_study, write


def _patient() -> str:
    return f"PAT{uuid.uuid4().hex[:10]}"


def test_by_study_instance_uid_and_by_accession(store_study):
    study = make_study(("PA",))
    source = store_study(*study)
    [by_uid] = locate_studies(source, study_instance_uid=study[0].StudyInstanceUID)
    [by_acc] = locate_studies(source, accession_number=study[0].AccessionNumber)
    assert by_uid == by_acc
    assert by_uid.study_instance_uid == study[0].StudyInstanceUID
    assert by_uid.accession_number == study[0].AccessionNumber
    assert by_uid.study_date == date(2026, 11, 28)
    assert by_uid.modalities == ("DX",)
    assert by_uid.description == "XR CHEST"


def test_by_patient_newest_first_radiographs_only_within_dates(store_study):
    patient = _patient()
    old = make_cxr(patient_id=patient, study_date="20240105")
    new = make_cxr(patient_id=patient, study_date="20261020", modality="CR")
    middle = make_cxr(patient_id=patient, study_date="20250612")
    ct = make_ct(patient_id=patient, study_date="20261101")
    ancient = make_cxr(patient_id=patient, study_date="20190101")
    source = store_study(old, new, middle, ct, ancient)
    found = locate_studies(source, patient_id=patient, date_range=(date(2020, 1, 1), None))
    assert [m.study_instance_uid for m in found] == [new.StudyInstanceUID, middle.StudyInstanceUID,
                                                      old.StudyInstanceUID]
    found = locate_studies(source, patient_id=patient, date_range=(None, date(2024, 12, 31)))
    assert [m.study_date for m in found] == [date(2024, 1, 5), date(2019, 1, 1)]


def test_several_matches_find_the_newest_study_with_a_frontal_image(store_study):
    patient = _patient()
    older_pa = make_study(("PA",), patient_id=patient, study_date="20250101")
    newer_lateral = make_study(("LL",), patient_id=patient, study_date="20260101")
    source = store_study(*older_pa, *newer_lateral)
    image = find_radiograph(source, patient_id=patient)
    assert image.study_instance_uid == older_pa[0].StudyInstanceUID
    assert image.study_date == date(2025, 1, 1)


def test_no_frontal_in_any_matching_study(store_study):
    patient = _patient()
    a = make_study(("LL",), patient_id=patient, study_date="20250101")
    b = make_study(("LATERAL",), patient_id=patient, study_date="20260101")
    source = store_study(*a, *b)
    with pytest.raises(NoFrontalRadiograph, match=rf"study {b[0].StudyInstanceUID}: no frontal CR/DX image; "
                                                  r"found LATERAL \(and none in 1 older matching studies\)"):
        find_radiograph(source, patient_id=patient)


def test_no_match_is_an_empty_list_and_a_clean_error_without_the_patient_id(store_study):
    source = store_study()
    assert locate_studies(source, accession_number="NO-SUCH-ACC") == []
    patient = _patient()
    with pytest.raises(StudyNotFound, match=r"matches the given PatientID with CR/DX studies and StudyDate "
                                            r"from 2026-01-01; the image may not be acquired yet") as info:
        find_radiograph(source, patient_id=patient, date_range=(date(2026, 1, 1), None))
    assert patient not in str(info.value)
    assert info.value.code == "study_not_found"
    with pytest.raises(StudyNotFound, match="matches AccessionNumber NO-SUCH-ACC;"):
        find_radiograph(source, accession_number="NO-SUCH-ACC")


def test_criteria_are_required():
    with pytest.raises(ValueError, match="locate_studies needs study_instance_uid, accession_number or patient_id"):
        locate_studies(FolderSource("."))


class IgnoresFilters(FolderSource):
    """A PACS that ignores every QIDO filter and returns all its studies (seen in the field)."""

    def search_for_studies(self, search_filters):
        return super().search_for_studies({})


def test_a_pacs_that_ignores_filters_is_rechecked_client_side(tmp_path):
    patient = _patient()
    wanted = make_cxr(patient_id=patient, study_date="20260301")
    other_patient = make_cxr(study_date="20260302")
    same_patient_ct = make_ct(patient_id=patient, study_date="20260303")
    out_of_range = make_cxr(patient_id=patient, study_date="20200101")
    for ds in (wanted, other_patient, same_patient_ct, out_of_range):
        write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
    source = IgnoresFilters(tmp_path)
    assert len(source.search_for_studies({"PatientID": patient})) == 4
    found = locate_studies(source, patient_id=patient, date_range=(date(2026, 1, 1), date(2026, 12, 31)))
    assert [m.study_instance_uid for m in found] == [wanted.StudyInstanceUID]
    [by_acc] = locate_studies(source, accession_number=wanted.AccessionNumber)
    assert by_acc.study_instance_uid == wanted.StudyInstanceUID
    assert locate_studies(source, study_instance_uid=generate_uid()) == []
