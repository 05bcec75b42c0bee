"""The two sources' edges: PACS down, 401, retries on 5xx only, timeouts, bytes, folder quirks."""
from __future__ import annotations

import socket

import pytest
from pydicom.uid import generate_uid

from imaging import (DicomWebSource, FolderSource, ImagingUnavailable, StudyNotFound, UndecodableImage,
                     find_radiograph, locate_studies, select_frontal)
from imaging.dicomweb import build_session
from tests.imaging.conftest import FakePacs
from tests.support.orthanc import OrthancServer
from tests.support.synthetic_cxr import make_cxr, make_study, to_bytes, write


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]          # closed again on exit: connecting is refused


def test_pacs_down_is_imaging_unavailable():
    url = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    source = DicomWebSource.from_url(url, retries=1, backoff_s=0)
    with pytest.raises(ImagingUnavailable, match=rf"DICOMweb {url} is unreachable while searching for studies "
                                                 r"\(connection refused or reset\); check that the PACS is running") as info:
        locate_studies(source, accession_number="A1")
    assert info.value.code == "pacs_unreachable"
    assert info.value.http_status == 503


@pytest.fixture(scope="module")
def orthanc_with_users(tmp_path_factory):
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-auth"), users={"ci": "ci-secret"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.orthanc
def test_pacs_401_names_the_fix_and_not_the_password(orthanc_with_users):
    study = make_study(("PA",))
    orthanc_with_users.store(*study)
    wrong = DicomWebSource.from_url(orthanc_with_users.dicomweb_url, username="ci", password="wrong-pw")
    with pytest.raises(ImagingUnavailable, match=r"answered 401 Unauthorized while searching for studies; "
                                                 r"check the DICOMweb credentials") as info:
        locate_studies(wrong, accession_number=study[0].AccessionNumber)
    assert info.value.code == "pacs_unauthorized"
    assert "wrong-pw" not in str(info.value)
    right = DicomWebSource.from_url(orthanc_with_users.dicomweb_url, username="ci", password="ci-secret")
    image = find_radiograph(right, accession_number=study[0].AccessionNumber)
    assert image.sop_instance_uid == study[0].SOPInstanceUID


def test_5xx_is_retried_then_reported():
    with FakePacs(status=503) as pacs:
        source = DicomWebSource.from_url(pacs.url, retries=2, backoff_s=0)
        with pytest.raises(ImagingUnavailable, match=r"answered 503 Service Unavailable while searching for studies "
                                                     r"\(after retries\); see the PACS log") as info:
            locate_studies(source, accession_number="A1")
    assert info.value.code == "pacs_error"
    assert len(pacs.requests) == 3                                   # first try + 2 retries


def test_4xx_is_never_retried():
    with FakePacs(status=400) as pacs:
        source = DicomWebSource.from_url(pacs.url, retries=3, backoff_s=0)
        with pytest.raises(ImagingUnavailable, match=r"refused the request \(400 Bad Request\) while searching for "
                                                     r"studies; not retried") as info:
            locate_studies(source, accession_number="A1")
    assert info.value.code == "pacs_rejected"
    assert len(pacs.requests) == 1


def test_404_on_retrieve_is_study_not_found():
    with FakePacs(status=404) as pacs:
        source = DicomWebSource.from_url(pacs.url, retries=3, backoff_s=0)
        with pytest.raises(StudyNotFound, match=r"answered 404 Not Found while retrieving instance 1.2.3"):
            source.retrieve_instance("1.2.1", "1.2.2", "1.2.3")
    assert len(pacs.requests) == 1


def test_slow_pacs_times_out():
    with FakePacs(delay_s=1.0) as pacs:
        source = DicomWebSource.from_url(pacs.url, timeout_s=0.2, retries=0)
        with pytest.raises(ImagingUnavailable, match="did not answer in time while searching for studies") as info:
            locate_studies(source, accession_number="A1")
    assert info.value.code == "pacs_timeout"


def test_bearer_token_is_sent_and_dicomweb_query_is_standard():
    with FakePacs(status=200, body=b"[]") as pacs:
        source = DicomWebSource.from_url(pacs.url, bearer_token="tok-123")
        assert locate_studies(source, patient_id="P1") == []
    [request] = pacs.requests
    assert request["Authorization"] == "Bearer tok-123"
    assert request["path"].startswith("/dicom-web/studies?")
    assert "ModalitiesInStudy=CR%2CDX%2CDR" in request["path"]


def test_contradictory_or_embedded_credentials_are_refused():
    with pytest.raises(ValueError, match="either username/password or bearer_token for the PACS, not both"):
        build_session(username="u", password="p", bearer_token="t")
    with pytest.raises(ValueError, match="needs both a username and a password"):
        build_session(username="u")
    with pytest.raises(ValueError, match="put PACS credentials in username/password, not in the DICOMweb URL"):
        DicomWebSource.from_url("http://u:p@127.0.0.1:1/dicom-web")


@pytest.mark.orthanc
def test_bytes_transferred_is_the_one_instance_on_the_wire(orthanc, dicomweb):
    study = make_study(("PA", "LL"), rows=128, cols=100)
    [answer, _] = orthanc.store(*study)
    stored = orthanc.stored_bytes(answer["ID"])
    [match] = locate_studies(dicomweb, accession_number=study[0].AccessionNumber)
    retrieved = dicomweb.retrieve_instance(match.study_instance_uid, study[0].SeriesInstanceUID,
                                           study[0].SOPInstanceUID)
    # the multipart body: the stored file plus a few hundred bytes of part headers and boundaries
    assert len(stored) < retrieved.bytes_transferred < len(stored) + 1024
    assert retrieved.dataset.SOPInstanceUID == study[0].SOPInstanceUID


def test_folder_that_does_not_exist(tmp_path):
    source = FolderSource(tmp_path / "missing")
    with pytest.raises(ImagingUnavailable, match=r"image folder .*missing does not exist or is not a directory") as info:
        locate_studies(source, accession_number="A1")
    assert info.value.code == "folder_missing"


def test_folder_skips_non_dicom_and_hidden_files_and_sees_new_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".index.db").write_bytes(b"\x00" * 300)
    source = FolderSource(tmp_path)
    assert source.search_for_studies({}) == []
    ds = make_cxr()
    write(ds, tmp_path / "sub" / "pa.dcm")                            # found recursively, after the first scan
    [study] = locate_studies(source, accession_number=ds.AccessionNumber)
    assert study.study_instance_uid == ds.StudyInstanceUID


def test_folder_truncated_file_is_undecodable(tmp_path):
    ds = make_cxr()
    data = to_bytes(ds)
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])
    source = FolderSource(tmp_path)
    [study] = locate_studies(source, accession_number=ds.AccessionNumber)   # the header is intact
    selection = select_frontal(source, study)
    with pytest.raises(UndecodableImage, match=rf"instance {ds.SOPInstanceUID}: pixel data in transfer syntax "
                                               r"'Explicit VR Little Endian' .* could not be decoded") as info:
        find_radiograph(source, accession_number=ds.AccessionNumber)
    assert info.value.code == "corrupt_pixel_data"
    assert selection.sop_instance_uid == ds.SOPInstanceUID


def test_folder_instance_gone_after_selection(tmp_path):
    source = FolderSource(tmp_path)
    with pytest.raises(StudyNotFound, match=r"instance 1.2.3 is not in folder "):
        source.retrieve_instance(generate_uid(), generate_uid(), "1.2.3")


def test_corrupt_part_from_the_pacs_is_undecodable():
    body = b"--XXb\r\nContent-Type: application/dicom\r\n\r\nthis is not DICOM\r\n--XXb--\r\n"
    with FakePacs(body=body, content_type='multipart/related; type="application/dicom"; boundary=XXb') as pacs:
        source = DicomWebSource.from_url(pacs.url)
        with pytest.raises(UndecodableImage, match=r"instance 1.2.3 from DICOMweb .* is not readable DICOM "
                                                   r"\(InvalidDicomError: .*\); the stored file may be truncated") as info:
            source.retrieve_instance("1.2.1", "1.2.2", "1.2.3")
    assert info.value.code == "corrupt_dicom"
    assert "transfer-syntax=*" in pacs.requests[0]["Accept"]            # never ask the PACS to transcode


class WrongInstance(FolderSource):
    """A misbehaving PACS that answers a WADO-RS request with some other instance."""

    def retrieve_instance(self, study_instance_uid, series_instance_uid, sop_instance_uid):
        other = make_cxr()
        from imaging.source import RetrievedInstance
        return RetrievedInstance(other, 1)


def test_pacs_returning_another_instance_is_refused(tmp_path):
    ds = make_cxr()
    write(ds, tmp_path / "pa.dcm")
    with pytest.raises(ImagingUnavailable, match=rf"returned instance .* when asked for {ds.SOPInstanceUID}; "
                                                 r"check the PACS") as info:
        find_radiograph(WrongInstance(tmp_path), accession_number=ds.AccessionNumber)
    assert info.value.code == "pacs_wrong_instance"


def test_pacs_errors_carry_no_patient_id_in_message_chain_or_logs(caplog):
    url = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    source = DicomWebSource.from_url(url, retries=0)
    # INFO, the service's level: at DEBUG dicomweb-client and urllib3 print request URLs (lead: keep
    # those two loggers at INFO or above in production).
    with caplog.at_level("INFO"):
        with pytest.raises(ImagingUnavailable, match="is unreachable while searching for studies") as info:
            locate_studies(source, patient_id="PAT-SECRET-42")
    assert info.value.__cause__ is None and info.value.__suppress_context__   # requests' text has the URL
    assert "PAT-SECRET-42" not in str(info.value)
    assert "PAT-SECRET-42" not in caplog.text
