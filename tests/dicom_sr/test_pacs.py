"""store_sr / write_for_analysis against a real Orthanc (STOW-RS, QIDO-RS, WADO-RS) and a folder."""
from __future__ import annotations

import io
import json
import logging
import socket

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from dicom_sr import (FOLDER_SR_DIR, SrInputs, SrRecord, SrStoreFailed, SrStoreRefused, build_sr,
                      fetch_image_header, sr_uids, store_sr, write_for_analysis)
from imaging import DicomWebSource, FolderSource, locate_studies
from tests.dicom_sr.conftest import analysis_json
from tests.dicom_sr.sr_tree import FINDING, groups
from tests.support import synthetic_cxr as syn

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
orthanc_only = pytest.mark.orthanc


@pytest.fixture
def pacs(orthanc) -> DicomWebSource:
    return DicomWebSource.from_url(orthanc.dicomweb_url, timeout_s=30)


def srs_in_study(source: DicomWebSource, study_uid: str) -> list[pydicom.Dataset]:
    """QIDO-RS: the Comprehensive SR instances of one study."""
    found = source.client.search_for_instances(study_instance_uid=study_uid,
                                               search_filters={"SOPClassUID": COMPREHENSIVE_SR})
    return [pydicom.Dataset.from_json(item) for item in found]


@orthanc_only
def test_the_sr_lands_in_the_study_of_the_image_and_reads_back(orthanc, pacs, cxr, analysis, caplog):
    orthanc.store(cxr)
    caplog.set_level(logging.DEBUG)

    record = write_for_analysis(pacs, analysis)             # header fetched with WADO-RS metadata

    assert record.study_instance_uid == cxr.StudyInstanceUID
    assert (record.series_instance_uid, record.sop_instance_uid) == sr_uids(analysis["analysis_id"])
    (found,) = srs_in_study(pacs, cxr.StudyInstanceUID)
    assert found.SOPInstanceUID == record.sop_instance_uid and found.Modality == "SR"
    stored = pacs.client.retrieve_instance(cxr.StudyInstanceUID, record.series_instance_uid,
                                           record.sop_instance_uid, media_types=(("application/dicom", "*"),))
    sr = pydicom.dcmread(io.BytesIO(_part10(stored)))
    assert sr.PatientID == cxr.PatientID and sr.AccessionNumber == cxr.AccessionNumber
    assert (sr.PreliminaryFlag, sr.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")
    by_name = groups(sr)
    assert by_name["pleural_effusion"].one(FINDING).value == ("60046008", "SCT")
    assert by_name["pleural_effusion"].one(("60046008", "SCT")).value == ("52101004", "SCT")
    assert by_name["pneumothorax"].one(("36118008", "SCT")).value == ("272519000", "SCT")
    assert all([c.value[1] for c in g.children if c.value_type == "IMAGE"] == [cxr.SOPInstanceUID]
               for g in by_name.values())
    # the PACS's copy of the study lists the SR next to the image
    study = locate_studies(pacs, study_instance_uid=cxr.StudyInstanceUID)[0]
    assert "SR" in study.modalities
    # nothing that identifies the patient reached the log (which did record the write)
    assert f"SR {record.sop_instance_uid} stored in study {cxr.StudyInstanceUID}" in caplog.text
    for value in (cxr.PatientID, str(cxr.PatientName), cxr.PatientBirthDate, cxr.AccessionNumber):
        assert value not in caplog.text


def _part10(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@orthanc_only
def test_writing_twice_keeps_one_sr_per_analysis(orthanc, pacs, cxr, analysis, tmp_path):
    orthanc.store(cxr)

    first = write_for_analysis(pacs, analysis)
    second = write_for_analysis(pacs, analysis, header=fetch_image_header(
        pacs, cxr.StudyInstanceUID, cxr.SeriesInstanceUID, cxr.SOPInstanceUID))

    assert first == second
    assert [ds.SOPInstanceUID for ds in srs_in_study(pacs, cxr.StudyInstanceUID)] == [first.sop_instance_uid]
    # a new analysis of the same image is a second SR, not a replacement
    other = write_for_analysis(pacs, analysis_json(cxr, tmp_path, analysis_id="second-analysis"))
    assert {ds.SOPInstanceUID for ds in srs_in_study(pacs, cxr.StudyInstanceUID)} == \
        {first.sop_instance_uid, other.sop_instance_uid}


@orthanc_only
def test_a_retry_after_a_stow_5xx_stores_exactly_one_sr(orthanc, cxr, analysis, stow_stand_in):
    orthanc.store(cxr)
    answers = [(503, b"", None), (502, b"<html>bad gateway</html>", "text/html")]
    with stow_stand_in(answers, forward_to=orthanc.dicomweb_url) as proxy:
        source = DicomWebSource.from_url(proxy.url, timeout_s=30)
        for _ in answers:
            with pytest.raises(SrStoreFailed, match=r"answered 50[23] .* will be retried") as failed:
                write_for_analysis(source, analysis)
            assert failed.value.retryable and failed.value.http_status in (502, 503)
        record = write_for_analysis(source, analysis)        # the job layer's retry
        write_for_analysis(source, analysis)                 # and one more, e.g. after a restart
        assert len(proxy.posts) == 4

    pacs = DicomWebSource.from_url(orthanc.dicomweb_url)
    assert [ds.SOPInstanceUID for ds in srs_in_study(pacs, cxr.StudyInstanceUID)] == [record.sop_instance_uid]


def _failed_sop_body(sop_instance_uid: str, reason: int) -> bytes:
    return json.dumps({"00081198": {"vr": "SQ", "Value": [{
        "00081150": {"vr": "UI", "Value": [COMPREHENSIVE_SR]},
        "00081155": {"vr": "UI", "Value": [sop_instance_uid]},
        "00081197": {"vr": "US", "Value": [reason]}}]}}).encode()


def _sr(cxr, analysis):
    return build_sr(SrInputs.from_analysis(analysis, cxr))


def test_a_4xx_with_a_failure_reason_is_a_refusal_that_says_why(cxr, analysis, stow_stand_in):
    sr = _sr(cxr, analysis)
    # Orthanc's own shape: 409 and a DICOM JSON body without a Content-Type header
    with stow_stand_in([(409, _failed_sop_body(sr.SOPInstanceUID, 0xA900), None)]) as pacs:
        with pytest.raises(SrStoreRefused, match=rf"refused SR {sr.SOPInstanceUID} for study "
                                                 rf"{cxr.StudyInstanceUID} \(409, failure reason 0xA900 data "
                                                 r"set does not match SOP Class\); not retried") as refused:
            store_sr(DICOMwebClient(pacs.url), sr)
    assert not refused.value.retryable and refused.value.http_status == 409
    assert pacs.posts == [f"/dicom-web/studies/{cxr.StudyInstanceUID}"]


def test_a_plain_400_is_a_refusal(cxr, analysis, stow_stand_in):
    sr = _sr(cxr, analysis)
    with stow_stand_in([(400, b"Bad Request: " + str(cxr.PatientName).encode(), "text/plain")]) as pacs:
        with pytest.raises(SrStoreRefused, match=r"\(400 Bad Request\); not retried: the PACS could not parse") as e:
            store_sr(DicomWebSource(DICOMwebClient(pacs.url), name="test PACS"), sr)
    assert str(cxr.PatientName) not in str(e.value)        # a response body is never quoted


def test_503_and_out_of_resources_are_retryable(cxr, analysis, stow_stand_in):
    sr = _sr(cxr, analysis)
    with stow_stand_in([(503, b"", None), (200, _failed_sop_body(sr.SOPInstanceUID, 0xA700),
                                           "application/dicom+json")]) as pacs:
        client = DICOMwebClient(pacs.url)
        client.set_http_retry_params(retry=False)
        with pytest.raises(SrStoreFailed, match="answered 503"):
            store_sr(client, sr)
        with pytest.raises(SrStoreFailed, match="0xA700 out of resources.*free storage on the PACS"):
            store_sr(client, sr)


def test_a_duplicate_sop_instance_answer_counts_as_stored(cxr, analysis, stow_stand_in):
    sr = _sr(cxr, analysis)
    with stow_stand_in([(409, _failed_sop_body(sr.SOPInstanceUID, 0x0111), "application/dicom+json")]) as pacs:
        assert store_sr(DICOMwebClient(pacs.url), sr) == SrRecord.of(sr)


def test_an_unreachable_pacs_is_retryable(cxr, analysis):
    with socket.socket() as s:                   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = DicomWebSource.from_url(f"http://127.0.0.1:{port}/dicom-web", timeout_s=2, retries=0)
    with pytest.raises(SrStoreFailed, match="is unreachable while storing SR .* will be retried") as failed:
        store_sr(source, _sr(cxr, analysis))
    assert failed.value.code == "sr_pacs_unreachable"


@orthanc_only
def test_orthanc_refusing_without_credentials_is_explained(tmp_path, cxr, analysis):
    from tests.support.orthanc import OrthancServer

    with OrthancServer(tmp_path / "orthanc-auth", users={"ci": "ci-secret"}) as server:
        server.store(cxr)
        source = DicomWebSource.from_url(server.dicomweb_url, retries=0)
        with pytest.raises(SrStoreRefused, match=r"answered 401 .* check the DICOMweb credentials") as refused:
            write_for_analysis(source, analysis)                 # the header read is refused first
        with pytest.raises(SrStoreRefused, match=r"\(401 Unauthorized\); not retried: check the DICOMweb "
                                                 r"credentials"):
            store_sr(source, _sr(cxr, analysis))
        assert not refused.value.retryable
        authorised = DicomWebSource.from_url(server.dicomweb_url, username="ci", password="ci-secret")
        assert write_for_analysis(authorised, analysis).study_instance_uid == cxr.StudyInstanceUID


@orthanc_only
def test_a_missing_image_is_a_refusal_not_a_retry(pacs, analysis):
    # the analysis' image was never stored in this PACS (or was deleted): nothing to attach an SR to
    with pytest.raises(SrStoreRefused, match="cannot read the header of instance"):
        write_for_analysis(pacs, analysis)


def test_a_folder_source_gets_the_sr_as_a_file_once(tmp_path, cxr, analysis):
    folder = tmp_path / "images"
    syn.write(cxr, folder / "cxr.dcm")
    source = FolderSource(folder)

    record = write_for_analysis(source, analysis)
    again = write_for_analysis(source, analysis)

    assert record == again
    files = list((folder / FOLDER_SR_DIR).iterdir())
    assert [f.name for f in files] == [f"{record.sop_instance_uid}.dcm"]
    assert record.retrieve_url == str(files[0])
    sr = pydicom.dcmread(files[0])
    assert sr.StudyInstanceUID == cxr.StudyInstanceUID and sr.SOPClassUID == COMPREHENSIVE_SR
    assert "SR" in locate_studies(source, study_instance_uid=cxr.StudyInstanceUID)[0].modalities
