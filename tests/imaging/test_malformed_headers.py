"""Malformed header values become typed imaging errors or rejections, never bare exceptions.

Files are made with make_cxr, written with a valid placeholder value, and the placeholder's bytes are
then overwritten in the Part 10 bytes: what a misconfigured modality writes, which pydicom (tolerant
when reading) accepts and the display stages or the selection must survive. Placeholders start with
"+" so they can never occur inside a UID, nor (as 0x2B..) in 12-bit pixel data.
"""
from __future__ import annotations

import json
from datetime import date

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging import (DicomWebSource, FolderSource, NoFrontalRadiograph, StudyNotFound, UndecodableImage,
                     find_radiograph, locate_studies, read_radiograph)
from tests.imaging.conftest import FakePacs
from tests.support.synthetic_cxr import make_cxr, to_bytes, write

FIX = r"check the modality's export settings and re-send the image"

# pydicom warns (tolerant reading) about each malformed value these tests write on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")


def _overwritten(ds: Dataset, tag: int, vr: str, placeholder: str, bad: bytes) -> bytes:
    """Part 10 bytes of ``ds`` whose element ``tag`` holds the raw value ``bad`` (same length)."""
    assert len(placeholder) == len(bad)
    ds[tag] = DataElement(tag, vr, placeholder)
    data = to_bytes(ds)
    assert data.count(placeholder.encode()) == 1
    return data.replace(placeholder.encode(), bad)


# -- the display stages (pixels.render), through read_radiograph ------------------------------------
@pytest.mark.parametrize("keyword, tag, exc", [
    ("WindowCenter", 0x00281050, "ValueError"),
    ("WindowWidth", 0x00281051, "ValueError"),
    ("RescaleSlope", 0x00281053, "UFuncTypeError"),
    ("RescaleIntercept", 0x00281052, "UFuncTypeError"),
])
def test_non_numeric_window_or_rescale_is_a_bad_image_header(keyword, tag, exc):
    data = _overwritten(make_cxr(), tag, "DS", "+9876.5", b"abc.def")
    with pytest.raises(UndecodableImage, match=rf"DICOM bytes cannot be displayed: malformed {keyword} 'abc.def' "
                                               rf"\({exc}: .*\); {FIX}") as info:
        read_radiograph(data)
    assert info.value.code == "bad_image_header"


def test_short_modality_lut_data_is_a_bad_image_header():
    ds = make_cxr()
    del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = b"\x00\x01" * 10                    # 20 bytes where 4096 16-bit entries (8192 bytes) belong
    ds.ModalityLUTSequence = Sequence([item])
    with pytest.raises(UndecodableImage, match=r"DICOM bytes cannot be displayed: malformed ModalityLUTSequence "
                                               r"LUTData \(20 bytes for 4096 entries of 16 bits\) \(error: unpack "
                                               rf"requires a buffer of 8192 bytes\); {FIX}") as info:
        read_radiograph(to_bytes(ds))
    assert info.value.code == "bad_image_header"


def test_non_integer_number_of_frames_is_a_bad_image_header():
    data = _overwritten(make_cxr(), 0x00280008, "IS", "+98765", b"abcdef")
    with pytest.raises(UndecodableImage, match=rf"DICOM bytes cannot be displayed: malformed NumberOfFrames 'abcdef' "
                                               rf"\(not an integer\); {FIX}") as info:
        read_radiograph(data)
    assert info.value.code == "bad_image_header"


def test_an_unattributable_header_error_says_a_pixel_related_attribute():
    # PixelPaddingValue written as text "1.5" (wrong VR): a number, but not the integer padding needs.
    data = _overwritten(make_cxr(), 0x00280120, "LO", "+1.5", b"1.5 ")
    with pytest.raises(UndecodableImage, match=r"DICOM bytes cannot be displayed: a malformed pixel-related "
                                               rf"attribute \(ValueError: .*'1.5'\); {FIX}") as info:
        read_radiograph(data)
    assert info.value.code == "bad_image_header"


# -- metadata on the way through a folder (locate, select, fetch) -----------------------------------
def test_folder_non_numeric_rows_is_a_bad_image_header(tmp_path):
    ds = make_cxr()
    (tmp_path / "pa.dcm").write_bytes(_overwritten(ds, 0x00280010, "IS", "+432", b"abcd"))
    source = FolderSource(tmp_path)
    with pytest.raises(UndecodableImage, match=rf"instance {ds.SOPInstanceUID} has Pixel Data but no valid "
                                               r"Rows/Columns \(Nonex256\); the header is corrupt") as info:
        find_radiograph(source, accession_number=ds.AccessionNumber)
    assert info.value.code == "bad_image_header"


def test_folder_non_numeric_series_number_is_tolerated(tmp_path):
    ds = make_cxr()
    data = _overwritten(ds, 0x00200011, "IS", "+432", b"abcd")          # SeriesNumber
    (tmp_path / "pa.dcm").write_bytes(data)
    image = find_radiograph(FolderSource(tmp_path), accession_number=ds.AccessionNumber)
    assert image.sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("study_date", ["2026-11-28", "20261128-20261129", "28.11.2026", "2026112"])
def test_folder_odd_study_date_is_no_date_and_outside_every_date_range(tmp_path, study_date):
    ds = make_cxr()
    ds.StudyDate = study_date
    write(ds, tmp_path / "pa.dcm")
    source = FolderSource(tmp_path)
    [match] = locate_studies(source, accession_number=ds.AccessionNumber)
    assert match.study_date is None
    assert locate_studies(source, accession_number=ds.AccessionNumber,
                          date_range=(date(2000, 1, 1), date(2100, 1, 1))) == []
    image = find_radiograph(source, accession_number=ds.AccessionNumber)
    assert image.study_date is None and image.sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("keyword, value", [
    ("StudyInstanceUID", ""), ("StudyInstanceUID", ["1.2.3", "1.2.4"]),
    ("SeriesInstanceUID", ""), ("SOPInstanceUID", ""),
])
def test_folder_files_without_a_usable_uid_are_not_indexed(tmp_path, keyword, value):
    ds = make_cxr()
    setattr(ds, keyword, value)
    write(ds, tmp_path / "pa.dcm")
    source = FolderSource(tmp_path)
    assert locate_studies(source, accession_number=ds.AccessionNumber) == []
    with pytest.raises(StudyNotFound, match=rf"no study in folder .* matches AccessionNumber {ds.AccessionNumber}"):
        find_radiograph(source, accession_number=ds.AccessionNumber)


# -- malformed DICOM JSON from a PACS (QIDO-RS) -------------------------------------------------------
def test_malformed_qido_json_is_dropped_element_by_element():
    answer = [
        {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00080050": {"vr": "SH", "Value": ["ACC9"]},
         "00280010": {"vr": "US", "Value": ["abc"]}, "00200011": {"vr": "IS", "Value": "x"},
         "00540220": {"vr": "SQ", "Value": [1]}},
        {"0020000D": {"vr": "UI"}, "00080050": {"vr": "SH", "Value": ["ACC9"]}},     # no UID value
        {"0020000D": {"vr": "UI", "Value": ["1.2.4", "1.2.5"]}, "00080050": {"vr": "SH", "Value": ["ACC9"]}},
        7,                                                                         # not an object at all
    ]
    with FakePacs(body=json.dumps(answer).encode()) as pacs:
        source = DicomWebSource.from_url(pacs.url, retries=0)
        [match] = locate_studies(source, accession_number="ACC9")
        assert (match.study_instance_uid, match.accession_number) == ("1.2.3", "ACC9")
        # The same answer to the series search: no item has a SeriesInstanceUID, so nothing to select.
        with pytest.raises(NoFrontalRadiograph, match=r"study 1.2.3: no frontal CR/DX image; found NO UID"):
            find_radiograph(source, accession_number="ACC9")
