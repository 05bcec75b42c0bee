"""build_sr: the TID 1500 Comprehensive SR of one analysis, checked with pydicom and with dciodvfy."""
from __future__ import annotations

import io
from datetime import datetime, timezone

import highdicom as hd
import pydicom
import pytest

from dicom_sr import (DRAFT_NOTICE, SERIES_DESCRIPTION, InvalidSrInput, SrInputs, SrRecord, build_sr, image_header,
                      sr_uids)
from prompts import Findings
from tests.dicom_sr.conftest import MODEL, REPORT, analysis_json
from tests.dicom_sr.sr_tree import FINDING, groups, tree
from tests.support import synthetic_cxr as syn

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
# The codes as the standard and IMAGING_FHIR.md §5.3 give them, written out here on purpose.
PRESENT, ABSENT, UNDETERMINED = ("52101004", "SCT"), ("272519000", "SCT"), ("373068000", "SCT")
LEFT, RIGHT = ("7771000", "SCT"), ("24028007", "SCT")
LATERALITY, FINDING_SITE, SEVERITY = ("272741003", "SCT"), ("363698007", "SCT"), ("246112005", "SCT")
PROBABILITY = ("122157", "DCM")
SNOMED = {"cardiomegaly": "8186001", "consolidation": "95436008", "pleural_effusion": "60046008",
          "pneumothorax": "36118008", "atelectasis": "46621007", "edema": "19242006"}


def to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def build(analysis: dict, header) -> pydicom.Dataset:
    """Build, write and read back: assertions run on what a PACS or a viewer would read."""
    return pydicom.dcmread(io.BytesIO(to_bytes(build_sr(SrInputs.from_analysis(analysis, header)))))


def test_each_mentioned_finding_is_a_coded_qualitative_evaluation(cxr, analysis):
    sr = build(analysis, cxr)
    by_name = groups(sr)

    expected = {"cardiomegaly": PRESENT, "consolidation": UNDETERMINED, "pleural_effusion": PRESENT,
                "pneumothorax": ABSENT}
    for name, presence in expected.items():
        group = by_name[name]
        code = (SNOMED[name], "SCT")
        assert group.one(FINDING).value == code
        assert group.one(code).value == presence, name        # qualitative evaluation: finding = presence
    effusion = by_name["pleural_effusion"]
    assert effusion.one(SEVERITY).value == ("small", "99CXRCDS")
    site = effusion.one(FINDING_SITE)
    assert site.value == ("3120008", "SCT") and site.one(LATERALITY).value == LEFT
    assert by_name["consolidation"].one(FINDING_SITE).one(LATERALITY).value == RIGHT
    assert by_name["cardiomegaly"].one(SEVERITY).value == ("6736007", "SCT")       # CID 3716 Moderate
    assert by_name["pneumothorax"].find(FINDING_SITE) == [] and by_name["pneumothorax"].find(SEVERITY) == []


def test_scores_are_probability_measurements_also_for_unmentioned_findings(cxr, analysis):
    by_name = groups(build(analysis, cxr))

    assert set(by_name) == {"atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion",
                            "pneumothorax"}
    for name, score in analysis["scores"].items():
        (num,) = [c for c in by_name[name].children if c.value_type == "NUM"]
        assert num.name == PROBABILITY
        assert num.value == (pytest.approx(score), ("1", "UCUM"))
        assert num.one(("370129005", "SCT")).value == ("yes-probability", "99CXRCDS")   # Measurement Method
    # atelectasis and edema are scored, not mentioned: a probability and no presence value
    assert by_name["edema"].find(("19242006", "SCT")) == []


def test_the_image_read_is_referenced_exactly(cxr, analysis):
    sr = build(analysis, cxr)
    read = (cxr.SOPClassUID, cxr.SOPInstanceUID)

    images = [item.value for item in tree(sr).walk() if item.value_type == "IMAGE"]
    assert images and set(images) == {read}                          # image library + every group
    for group in groups(sr).values():
        assert [c.value for c in group.children if c.value_type == "IMAGE"] == [read]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == cxr.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == cxr.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == cxr.SOPInstanceUID


def test_same_study_and_patient_as_the_image_and_labelled_as_an_ai_draft(cxr, analysis):
    sr = build(analysis, cxr)

    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyDate", "StudyTime", "StudyID", "ReferringPhysicianName"):
        assert sr[keyword].value == cxr[keyword].value, keyword
    assert sr.SeriesInstanceUID != cxr.SeriesInstanceUID
    assert sr.SeriesDescription == SERIES_DESCRIPTION and "AI DRAFT" in sr.SeriesDescription
    assert (sr.PreliminaryFlag, sr.CompletionFlag, sr.VerificationFlag) == ("PRELIMINARY", "PARTIAL", "UNVERIFIED")
    assert "VerifyingObserverSequence" not in sr
    root = tree(sr)
    assert root.name == ("126000", "DCM")                              # Imaging Measurement Report
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    texts = root.one(("C0034375", "UMLS"))
    assert texts.one(("121070", "DCM")).value == REPORT                # the report, verbatim
    notice = texts.one(("121106", "DCM")).value
    assert notice.startswith(DRAFT_NOTICE) and analysis["analysis_id"] in notice


def test_observer_is_the_device_and_the_algorithm_is_identified(cxr, analysis):
    sr = build(analysis, cxr)
    root = tree(sr)

    assert root.one(("121005", "DCM")).value == ("121007", "DCM")      # Observer Type = Device
    assert root.one(("121012", "DCM")).value.startswith("2.25.")       # Device Observer UID
    assert root.one(("121015", "DCM")).value == MODEL["name"]          # Device Observer Model Name
    for group in groups(sr).values():
        assert group.one(("111001", "DCM")).value == MODEL["name"]       # TID 4019 Algorithm Name
        assert group.one(("111003", "DCM")).value == MODEL["revision"]   # Algorithm Version
        parameters = {p.value for p in group.find(("111002", "DCM"))}
        assert parameters == {"dtype=bfloat16", "quantization=4bit", "prompt=report_context.v1",
                              "scores_prompt=finding_question.v1"}


def test_uids_come_from_the_analysis_id_so_a_rebuild_is_the_same_object(cxr, analysis, tmp_path):
    first = to_bytes(build_sr(SrInputs.from_analysis(analysis, cxr)))
    again = to_bytes(build_sr(SrInputs.from_analysis(analysis, image_header(cxr))))
    assert first == again
    sr = pydicom.dcmread(io.BytesIO(first))
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == sr_uids(analysis["analysis_id"])
    assert sr.SOPInstanceUID.startswith("2.25.") and len(sr.SOPInstanceUID) <= 64

    other = analysis_json(cxr, tmp_path, analysis_id="another-analysis")
    assert build_sr(SrInputs.from_analysis(other, cxr)).SOPInstanceUID != sr.SOPInstanceUID


def test_a_report_with_nothing_coded_still_gives_a_valid_sr(cxr, tmp_path, dciodvfy):
    analysis = analysis_json(cxr, tmp_path, report="Yesgraph\x00pl\u200bhora <<\ufffd [te", scores=None)
    sr = build_sr(SrInputs.from_analysis(analysis, cxr))

    assert list(groups(sr)) == ["no coded findings"]
    assert tree(sr).one(("C0034375", "UMLS")).one(("121070", "DCM")).value == "Yesgraphplhora <<\ufffd [te"
    path = tmp_path / "empty.dcm"
    sr.save_as(path, enforce_file_format=True)
    errors, output = dciodvfy(path)
    assert errors == [], output


def cr_without_detector_spacing():
    ds = syn.make_cxr(view="AP", modality="CR")
    del ds.ImagerPixelSpacing                     # a CR plate: PixelSpacing only, so no TID 1603 library entry
    return ds


def latin1_patient():
    ds = syn.make_cxr(view="PA")
    ds.SpecificCharacterSet = "ISO_IR 100"        # the SR re-encodes the copied name in UTF-8
    ds.PatientName = "Müller^Zoë"
    return ds


VARIANTS = {
    "dx_with_scores": (lambda: syn.make_cxr(view="PA"), REPORT, True),
    "cr_no_image_library": (cr_without_detector_spacing, REPORT, False),
    "latin1_name_utf8_text": (latin1_patient,
                            "Kleiner Pleuraerguss links – mild edema. Ödem?", True),
    "severities_and_lateralities": (lambda: syn.make_cxr(view="PA"),
                                    "Moderate to severe bilateral pulmonary edema. Small to moderate right "
                                    "pneumothorax. Trace left pleural effusion. Mild bibasilar atelectasis. "
                                    "No acute cardiopulmonary abnormality.", False),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dciodvfy_finds_no_errors(variant, tmp_path, dciodvfy):
    make, report, with_scores = VARIANTS[variant]
    ds = make()
    analysis = analysis_json(ds, tmp_path, report=report, scores=None if not with_scores else
                             {"cardiomegaly": 0.5, "pneumothorax": 0.01})
    path = tmp_path / "sr.dcm"
    build_sr(SrInputs.from_analysis(analysis, ds)).save_as(path, enforce_file_format=True)

    errors, output = dciodvfy(path)
    assert errors == [], output
    assert "ComprehensiveSR" in output                  # dciodvfy recognised the IOD it checked


def test_highdicom_reads_it_back_as_a_measurement_report(cxr, analysis, tmp_path):
    path = tmp_path / "sr.dcm"
    build_sr(SrInputs.from_analysis(analysis, cxr)).save_as(path, enforce_file_format=True)

    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    found = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    assert found["pleural_effusion"].finding_type.value == "60046008"
    assert [s.referenced_sop_instance_uid for s in found["pleural_effusion"].source_images] == [cxr.SOPInstanceUID]
    (observer,) = sr.content.get_observer_contexts(observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"))
    assert observer.observer_identifying_attributes.model_name == MODEL["name"]


def test_the_header_must_be_of_the_instance_read(cxr, analysis):
    other = syn.make_cxr(view="PA", study_uid=cxr.StudyInstanceUID)
    with pytest.raises(InvalidSrInput, match=rf"header is instance {other.SOPInstanceUID} but analysis .* "
                                             rf"read instance {cxr.SOPInstanceUID}"):
        SrInputs.from_analysis(analysis, other)


def test_a_header_without_uids_is_refused_with_what_is_missing(cxr, analysis):
    del cxr.SOPClassUID
    del cxr.SeriesInstanceUID
    with pytest.raises(InvalidSrInput, match="lacks SeriesInstanceUID, SOPClassUID"):
        SrInputs.from_analysis(analysis, cxr)


def test_an_incomplete_analysis_is_refused(cxr, analysis):
    del analysis["model"]
    with pytest.raises(InvalidSrInput, match="the analysis lacks 'model'"):
        SrInputs.from_analysis(analysis, cxr)
    with pytest.raises(InvalidSrInput, match="analysis_id is empty"):
        SrInputs(analysis_id=" ", report_text="", findings=Findings(()), model=MODEL, image_header=cxr,
                 created=datetime.now(timezone.utc))
    with pytest.raises(InvalidSrInput, match="findings must be prompts.Findings, not dict"):
        SrInputs(analysis_id="a", report_text="", findings={}, model=MODEL, image_header=cxr,
                 created=datetime.now(timezone.utc))


def test_image_header_keeps_patient_and_study_and_drops_the_rest(cxr):
    header = image_header(cxr)
    assert header.PatientID == cxr.PatientID and header.StudyInstanceUID == cxr.StudyInstanceUID
    assert header.SOPClassUID == cxr.SOPClassUID and header.Rows == cxr.Rows
    assert "PixelData" not in header and "KVP" not in header and "WindowCenter" not in header
    bare = syn.make_cxr(view="PA")
    del bare.ReferringPhysicianName
    del bare.StudyID
    header = image_header(bare)
    assert header["ReferringPhysicianName"].is_empty and header["StudyID"].is_empty      # Type 2: present, empty


def test_sr_record_round_trips(cxr, analysis):
    record = SrRecord.of(build_sr(SrInputs.from_analysis(analysis, cxr)))
    assert SrRecord.from_json(record.to_json()) == record
    assert record.sop_class_uid == COMPREHENSIVE_SR and record.study_instance_uid == cxr.StudyInstanceUID
