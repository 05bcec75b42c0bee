"""Frontal selection from metadata, against a real Orthanc and against the folder source."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from imaging import NoFrontalRadiograph, StudyNotFound, find_radiograph, locate_studies, select_frontal
from imaging.select import FILE_EXCLUSIONS, classify
from tests.support.synthetic_cxr import (make_ct, make_cxr, make_presentation_state, make_rgb_secondary_capture,
                                         make_study)


def _select(source, datasets):
    [study] = locate_studies(source, study_instance_uid=datasets[0].StudyInstanceUID)
    return select_frontal(source, study)


def test_pa_preferred_over_lateral_and_ap(store_study):
    study = make_study(("LL", "AP", "PA"))
    source = store_study(*study)
    selection = _select(source, study)
    assert selection.sop_instance_uid == study[2].SOPInstanceUID
    assert selection.series_instance_uid == study[2].SeriesInstanceUID
    assert selection.view == "PA"
    assert selection.reason.startswith("PA by ViewPosition 'PA'")
    assert sorted(selection.considered) == ["AP", "LL", "PA"]


def test_ap_only_study_gives_ap(store_study):
    study = make_study(("AP",))
    selection = _select(store_study(*study), study)
    assert (selection.view, selection.sop_instance_uid) == ("AP", study[0].SOPInstanceUID)


def test_lateral_only_study_is_rejected_with_what_was_found(store_study):
    study = make_study(("LL", "LATERAL"))
    source = store_study(*study)
    uid = study[0].StudyInstanceUID
    with pytest.raises(NoFrontalRadiograph, match=rf"study {uid}: no frontal CR/DX image; found (LL, LATERAL|LATERAL, LL)$"):
        _select(source, study)


def test_missing_view_position_falls_back_to_series_description(store_study):
    study = make_study((None, None), series_description="THORAX P.A.")
    study[1].SeriesDescription = "THORAX LAT"
    source = store_study(*study)
    selection = _select(source, study)
    assert selection.sop_instance_uid == study[0].SOPInstanceUID
    assert selection.view == "PA"
    assert "SeriesDescription 'THORAX P.A.'" in selection.reason


def test_view_code_sequence_is_read_from_instance_metadata(store_study):
    ds = make_cxr(view=None, series_description=None)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10206", "SRT", "antero-posterior"
    ds.ViewCodeSequence = Sequence([code])
    selection = _select(store_study(ds), [ds])
    assert selection.view == "AP"
    assert "ViewCodeSequence" in selection.reason


def test_patient_orientation_and_laterality_fallbacks(store_study):
    frontal = make_cxr(view=None, series_description=None, patient_orientation=["L", "F"])
    lateral = make_cxr(view=None, series_description=None, patient_orientation=["P", "F"],
                       study_uid=frontal.StudyInstanceUID, accession=frontal.AccessionNumber,
                       patient_id=frontal.PatientID)
    selection = _select(store_study(frontal, lateral), [frontal])
    assert selection.sop_instance_uid == frontal.SOPInstanceUID
    assert selection.view == "FRONTAL"
    assert "PatientOrientation 'L'" in selection.reason


def test_ambiguous_description_is_skipped_for_the_next_attribute(store_study):
    ds = make_cxr(view=None, series_description="CHEST PA AND LAT", patient_orientation=["P", "F"])
    source = store_study(ds)
    with pytest.raises(NoFrontalRadiograph, match="found LATERAL$"):
        _select(source, [ds])


def test_ct_study_is_rejected(store_study):
    ct = make_ct()
    scout = make_ct(localizer=True, study_uid=ct.StudyInstanceUID, accession=ct.AccessionNumber)
    source = store_study(ct, scout)
    with pytest.raises(NoFrontalRadiograph, match=rf"study {ct.StudyInstanceUID}: no frontal CR/DX image; found CT$"):
        _select(source, [ct])


def test_presentation_state_and_secondary_capture_are_never_chosen(store_study):
    pa = make_cxr(view="PA", series_number=3)
    common = dict(study_uid=pa.StudyInstanceUID, accession=pa.AccessionNumber, patient_id=pa.PatientID)
    sc = make_rgb_secondary_capture(modality="DX", **common)          # a DX-labelled screenshot
    pr = make_presentation_state(**common)
    selection = _select(store_study(sc, pr, pa), [pa])
    assert selection.sop_instance_uid == pa.SOPInstanceUID
    assert sorted(selection.considered) == ["PA", "PR", "SC"]


def test_non_chest_and_localizer_are_listed_when_rejected(store_study):
    knee = make_cxr(view="AP", body_part="KNEE")
    scout = make_cxr(view="PA", study_uid=knee.StudyInstanceUID, accession=knee.AccessionNumber,
                     patient_id=knee.PatientID)
    scout.ImageType = ["DERIVED", "SECONDARY", "LOCALIZER"]
    source = store_study(knee, scout)
    with pytest.raises(NoFrontalRadiograph, match="found (KNEE, LOCALIZER|LOCALIZER, KNEE)$"):
        _select(source, [knee])


def test_unknown_view_is_accepted_last_and_said_so(store_study):
    ds = make_cxr(view=None, series_description=None)
    selection = _select(store_study(ds), [ds])
    assert selection.view == "UNKNOWN"
    assert "view not recorded" in selection.reason


def test_find_radiograph_fetches_the_selected_instance_only(store_study):
    study = make_study(("LL", "PA"), rows=96, cols=80)
    source = store_study(*study)
    image = find_radiograph(source, accession_number=study[0].AccessionNumber)
    assert image.sop_instance_uid == study[1].SOPInstanceUID
    assert image.view_position == "PA"
    assert image.pixels.shape == (96, 80)
    assert image.bytes_transferred >= 96 * 80 * 2       # one 16-bit instance, not the study
    assert image.bytes_transferred < 2 * 96 * 80 * 2
    assert image.study_json()["selected"]["reason"].startswith("PA by ViewPosition")


def test_study_without_series_is_not_found(store_study):
    source = store_study()
    uid = generate_uid()
    with pytest.raises(StudyNotFound, match=rf"study {uid} has no series in "):
        select_frontal(source, uid)


# -- the rule table alone (no source) --------------------------------------------------------------
@pytest.mark.parametrize(("attrs", "view", "label"), [
    ({"ViewPosition": "PA"}, "PA", "PA"),
    ({"ViewPosition": "LATERAL"}, None, "LATERAL"),
    ({"ViewPosition": "RL"}, None, "RL"),
    ({"ViewPosition": "LLD"}, None, "LLD"),
    ({"ViewPosition": "RLO"}, None, "RLO"),
    ({"SeriesDescription": "CHEST PORTABLE"}, "AP", "AP"),
    ({"SeriesDescription": "LEFT LATERAL DECUBITUS"}, None, "DECUBITUS"),
    ({"SeriesDescription": "BILATERAL RIBS PA"}, "PA", "PA"),
    ({"ProtocolName": "Thorax frontal"}, "FRONTAL", "FRONTAL"),
    ({"ImageLaterality": "B"}, "FRONTAL", "FRONTAL"),
    ({}, "UNKNOWN", "UNKNOWN"),
])
def test_view_rules(attrs, view, label):
    ds = Dataset()
    ds.Modality = "CR"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    verdict = classify(ds)
    assert (verdict.view, verdict.label) == (view, label)


def test_file_rules_accept_a_secondary_capture_but_not_ct():
    sc = make_rgb_secondary_capture()
    assert classify(sc, FILE_EXCLUSIONS).view == "PA"
    assert classify(sc).label == "SC"
    assert classify(make_ct(), FILE_EXCLUSIONS).label == "CT"
