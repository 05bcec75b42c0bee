"""The byte cap (``max_bytes``) on one retrieved instance and on a Deflated data set's inflated size."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from imaging import (MAX_BYTES, DicomWebSource, FolderSource, UnsupportedImage, fetch_radiograph,
                     find_radiograph, locate_studies, read_radiograph, select_frontal)
from tests.imaging.conftest import FakePacs
from tests.support.synthetic_cxr import compress, make_cxr, to_bytes, write

RAISE = (r"if this is a genuine radiograph, raise max_bytes where the image source is made "
         r"\(e.g. DicomWebSource.from_url\(url, max_bytes=...\), FolderSource\(path, max_bytes=...\)\)")
MULTIPART = 'multipart/related; type="application/dicom"; boundary=XXb'


def _deflated_flat():
    """A 320 x 256 16-bit image (~165 kB once inflated) that deflates to a few kB: a tiny zip bomb."""
    ds = make_cxr(pixels=np.full((320, 256), 0.5), windows=False)
    return compress(ds, DeflatedExplicitVRLittleEndian)


def _multipart(part: bytes) -> bytes:
    return b"--XXb\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--XXb--\r\n"


def test_default_is_512_mb_and_the_limit_must_be_positive(tmp_path):
    assert MAX_BYTES == 512_000_000
    with pytest.raises(ValueError, match=r"max_bytes must be > 0 \(bytes per retrieved instance\), not 0"):
        DicomWebSource.from_url("http://127.0.0.1:1/dicom-web", max_bytes=0)
    with pytest.raises(ValueError, match=r"max_bytes must be > 0 \(bytes per DICOM file\), not -1"):
        FolderSource(tmp_path, max_bytes=-1)


def test_wado_rs_answer_over_the_cap_by_content_length():
    with FakePacs(body=b"x" * 5000, content_type=MULTIPART) as pacs:
        source = DicomWebSource.from_url(pacs.url, retries=0, max_bytes=1000)
        with pytest.raises(UnsupportedImage, match=r"instance 1.2.3 from DICOMweb .* is 5000 bytes \(Content-Length\), "
                                                   rf"over the limit of 1000 bytes per instance; {RAISE}") as info:
            source.retrieve_instance("1.2.1", "1.2.2", "1.2.3")
    assert info.value.code == "image_too_large"


def test_wado_rs_answer_over_the_cap_without_content_length():
    with FakePacs(body=b"x" * 3_000_000, content_type=MULTIPART, content_length=False) as pacs:
        source = DicomWebSource.from_url(pacs.url, retries=0, max_bytes=1_500_000)
        with pytest.raises(UnsupportedImage, match=r"instance 1.2.3 from DICOMweb .* is more than 1.5 MB \(no "
                                                   r"Content-Length; reading stopped there\), over the limit of "
                                                   rf"1.5 MB per instance; {RAISE}") as info:
            source.retrieve_instance("1.2.1", "1.2.2", "1.2.3")
    assert info.value.code == "image_too_large"


def test_wado_rs_answer_under_the_cap_without_content_length_is_read_whole():
    ds = make_cxr(rows=64, cols=48)
    body = _multipart(to_bytes(ds))
    with FakePacs(body=body, content_type=MULTIPART, content_length=False) as pacs:
        source = DicomWebSource.from_url(pacs.url, retries=0, max_bytes=len(body))
        retrieved = source.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert retrieved.dataset.SOPInstanceUID == ds.SOPInstanceUID
    assert retrieved.bytes_transferred == len(body)


def test_wado_rs_deflated_instance_over_the_inflated_cap():
    ds = _deflated_flat()
    body = _multipart(to_bytes(ds))
    assert len(body) < 20_000
    with FakePacs(body=body, content_type=MULTIPART) as pacs:
        source = DicomWebSource.from_url(pacs.url, retries=0, max_bytes=50_000)
        with pytest.raises(UnsupportedImage, match=rf"instance {ds.SOPInstanceUID} from DICOMweb .* is a deflated "
                                                   r"data set that inflates to at least \d+ bytes, over the limit "
                                                   rf"of 50000 bytes per instance; {RAISE}") as info:
            source.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert info.value.code == "image_too_large"


@pytest.mark.orthanc
def test_orthanc_deflated_instance_over_the_inflated_cap(orthanc):
    ds = _deflated_flat()
    orthanc.store(ds)
    roomy = DicomWebSource.from_url(orthanc.dicomweb_url, timeout_s=30, max_bytes=1_000_000)
    [study] = locate_studies(roomy, accession_number=ds.AccessionNumber)
    selection = select_frontal(roomy, study)
    assert fetch_radiograph(roomy, study, selection).sop_instance_uid == ds.SOPInstanceUID
    tight = DicomWebSource.from_url(orthanc.dicomweb_url, timeout_s=30, max_bytes=50_000)
    with pytest.raises(UnsupportedImage, match=rf"instance {ds.SOPInstanceUID} from DICOMweb .* is a deflated data "
                                               r"set that inflates to at least \d+ bytes, over the limit of 50000 "
                                               r"bytes per instance") as info:
        fetch_radiograph(tight, study, selection)
    assert info.value.code == "image_too_large"


def test_deflated_file_over_the_inflated_cap():
    data = to_bytes(_deflated_flat())
    assert len(data) < 20_000
    with pytest.raises(UnsupportedImage, match=r"DICOM bytes is a deflated data set that inflates to at least "
                                               rf"\d+ bytes, over the limit of 50000 bytes per instance; {RAISE}") as info:
        read_radiograph(data, max_bytes=50_000)
    assert info.value.code == "image_too_large"
    assert read_radiograph(data, max_bytes=200_000).pixels.shape == (320, 256)   # 165 kB inflated: fine


def test_file_over_the_cap_is_refused_before_it_is_read(tmp_path):
    path = write(make_cxr(rows=64, cols=48), tmp_path / "pa.dcm")
    size = path.stat().st_size
    with pytest.raises(UnsupportedImage, match=rf"file pa.dcm is {size} bytes, over the limit of 1000 bytes per "
                                               rf"instance; {RAISE}") as info:
        read_radiograph(path, max_bytes=1000)
    assert info.value.code == "image_too_large"
    with pytest.raises(UnsupportedImage, match=rf"DICOM bytes is {size} bytes, over the limit of 1000 bytes"):
        read_radiograph(path.read_bytes(), max_bytes=1000)


def test_folder_file_over_the_cap_is_refused_at_retrieval(tmp_path):
    ds = make_cxr(rows=64, cols=48)
    size = write(ds, tmp_path / "pa.dcm").stat().st_size
    source = FolderSource(tmp_path, max_bytes=1000)
    with pytest.raises(UnsupportedImage, match=rf"pa.dcm in folder .* is {size} bytes, over the limit of 1000 "
                                               rf"bytes per instance; {RAISE}") as info:
        find_radiograph(source, accession_number=ds.AccessionNumber)
    assert info.value.code == "image_too_large"


def test_folder_deflated_file_over_the_inflated_cap_is_not_indexed(tmp_path, caplog):
    ds = _deflated_flat()
    write(ds, tmp_path / "bomb.dcm")
    with caplog.at_level(logging.WARNING, logger="imaging.folder"):
        assert locate_studies(FolderSource(tmp_path, max_bytes=50_000), accession_number=ds.AccessionNumber) == []
    assert f"skipping a file in image folder {tmp_path}: image_too_large" in caplog.text
    [study] = locate_studies(FolderSource(tmp_path, max_bytes=200_000), accession_number=ds.AccessionNumber)
    assert study.study_instance_uid == ds.StudyInstanceUID
