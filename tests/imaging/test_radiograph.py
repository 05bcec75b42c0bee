"""Whole path on a real CR chest (RG1 from pydicom-data) and the local-file entry point's refusals."""
from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from datetime import date

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from imaging import (NoFrontalRadiograph, RadiographImage, StudyNotFound, UndecodableImage, UnsupportedImage,
                     find_radiograph, read_radiograph)
from tests.support.synthetic_cxr import (make_ct, make_cxr, make_multiframe, make_presentation_state,
                                         make_rgb_secondary_capture, to_bytes, write)

RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"


@pytest.fixture(scope="module")
def rg1_uncompressed() -> RadiographImage:
    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    return read_radiograph(path)


def test_rg1_uncompressed_file(rg1_uncompressed):
    image = rg1_uncompressed
    assert image.pixels.shape == (1955, 1841) and image.pixels.dtype == np.uint8
    assert (image.modality, image.view_position, image.study_date) == ("CR", "PA", date(2004, 8, 26))
    assert image.notes == ("VOI: window 15000/30000 (LINEAR)", "inverted (MONOCHROME1)")
    assert image.selection_reason == "local file; PA by ViewPosition 'PA'"
    # MONOCHROME1 inverted: the lungs (centre left/right) are darker than the spine (centre)
    lungs = image.pixels[700:1100, [500, 1350]].mean()
    spine = image.pixels[700:1100, 900:940].mean()
    assert lungs < spine


@pytest.mark.orthanc
def test_rg1_lossless_jpeg2000_through_orthanc_is_pixel_exact(rg1_uncompressed, orthanc, dicomweb):
    orthanc.store(get_testdata_file("RG1_J2KR.dcm"))
    image = find_radiograph(dicomweb, study_instance_uid=RG1_STUDY)
    assert image.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.9.1.2.20040826185059.5457"   # the J2KR instance
    np.testing.assert_array_equal(image.pixels, rg1_uncompressed.pixels)
    assert 4_000_000 < image.bytes_transferred < 4_400_000         # 4.3 MB J2K, not the 7.2 MB raw image
    study = image.study_json()
    assert study["selected"] == {"series_instance_uid": image.series_instance_uid,
                                 "sop_instance_uid": image.sop_instance_uid, "view": "PA",
                                 "reason": "PA by ViewPosition 'PA'"}
    json.dumps(study)                                                # JSON-ready, no pixels
    assert "pixels" not in study


def test_radiograph_image_is_frozen_and_validated(rg1_uncompressed):
    with pytest.raises(FrozenInstanceError):
        rg1_uncompressed.view_position = "AP"
    with pytest.raises(ValueError, match="read-only"):
        rg1_uncompressed.pixels[0, 0] = 1
    with pytest.raises(ValueError, match=r"RadiographImage.pixels must be a \(H, W\) uint8 array, got ndarray float64"):
        RadiographImage(np.zeros((4, 4)), "1", "2", "3", None, None, None, None, None, None, None, None)


def test_study_json_of_a_synthetic_file(tmp_path):
    ds = make_cxr(view="AP", image_laterality="B")
    image = read_radiograph(write(ds, tmp_path / "ap.dcm"))
    assert image.study_json() == {
        "study_instance_uid": ds.StudyInstanceUID, "series_instance_uid": ds.SeriesInstanceUID,
        "sop_instance_uid": ds.SOPInstanceUID, "accession_number": ds.AccessionNumber,
        "study_date": "2026-11-28", "view_position": "AP", "laterality": "B", "pixel_spacing": [0.139, 0.139],
        "modality": "DX", "rows": 320, "columns": 256, "bytes_transferred": len(to_bytes(ds)),
        "notes": ["VOI: window 1843/2457 (LINEAR), first of 2"],
        "selected": {"series_instance_uid": ds.SeriesInstanceUID, "sop_instance_uid": ds.SOPInstanceUID,
                     "view": "AP", "reason": "local file; AP by ViewPosition 'AP'"},
    }


def test_file_variants_that_are_accepted_with_a_note():
    sc = read_radiograph(to_bytes(make_rgb_secondary_capture()))
    assert sc.notes[:2] == ("secondary capture: a copy of an image, quality may be reduced",
                            "RGB image converted to grayscale")
    multi = read_radiograph(to_bytes(make_multiframe(frames=2)))
    assert multi.notes[0] == "multi-frame image (2 frames): used frame 1"
    no_view = read_radiograph(to_bytes(make_cxr(view=None, series_description=None)))
    assert no_view.selection_reason == "local file; view not recorded, assumed frontal"
    assert no_view.view_position is None
    imager = make_cxr()
    del imager.PixelSpacing
    assert read_radiograph(to_bytes(imager)).notes[-1] == "pixel spacing from ImagerPixelSpacing (at the detector)"


def test_lateral_file_is_refused():
    with pytest.raises(NoFrontalRadiograph, match=r"DICOM bytes: not a frontal chest radiograph \(LL, by "
                                                  r"ViewPosition 'LL'\); give a PA or AP chest image"):
        read_radiograph(to_bytes(make_cxr(view="LL")))


def test_ct_file_is_refused():
    with pytest.raises(UnsupportedImage, match=r"file ct.dcm is a CT image \(Modality 'CT'\), not a chest "
                                               r"radiograph") as info:
        read_radiograph(_tmp_write(make_ct(), "ct.dcm"))
    assert info.value.code == "not_a_radiograph"


def test_presentation_state_file_is_refused():
    with pytest.raises(UnsupportedImage, match=r"is a PR image \(Modality 'PR'\)"):
        read_radiograph(to_bytes(make_presentation_state(study_uid="1.2.3")))


def test_non_chest_file_is_refused():
    with pytest.raises(NoFrontalRadiograph, match=r"not a frontal chest radiograph \(KNEE, by BodyPartExamined 'KNEE'\)"):
        read_radiograph(to_bytes(make_cxr(body_part="KNEE")))


def test_truncated_file_is_undecodable():
    data = to_bytes(make_cxr())
    with pytest.raises(UndecodableImage, match=r"DICOM bytes: pixel data .* could not be decoded"):
        read_radiograph(data[:-1000])
    with pytest.raises(UndecodableImage, match=r"DICOM bytes has no Pixel Data although its SOP class "
                                               r"1.2.840.10008.5.1.4.1.1.1.1 is an image; the file is probably truncated"):
        read_radiograph(data[:700])                                   # cut inside the header


def test_corrupt_deflated_dataset_is_not_readable_dicom():
    ds = make_cxr()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = to_bytes(ds)
    meta_end = 144 + int.from_bytes(data[140:144], "little")          # preamble, DICM, group length element
    with pytest.raises(UndecodableImage, match=r"DICOM bytes is not readable DICOM \(error: .*\); the file may be "
                                               r"truncated or corrupt") as info:
        read_radiograph(data[:meta_end] + b"not deflate data" * 8)
    assert info.value.code == "corrupt_dicom"


def test_not_dicom_and_missing_file(tmp_path):
    text = tmp_path / "report.txt"
    text.write_text("CHEST PA: no acute findings.\n" * 20)
    with pytest.raises(UnsupportedImage, match=r"file report.txt is not a DICOM image \(no SOP Class UID, no Pixel Data\)"):
        read_radiograph(text)
    with pytest.raises(StudyNotFound, match=r"nothing.dcm does not exist"):
        read_radiograph(tmp_path / "nothing.dcm")


def test_pixel_limit_applies_to_files():
    with pytest.raises(UnsupportedImage, match="over the limit of 0.0"):
        read_radiograph(to_bytes(make_cxr(rows=32, cols=32)), max_pixels=100)


def _tmp_write(ds, name):
    import tempfile
    from pathlib import Path

    return write(ds, Path(tempfile.mkdtemp()) / name)
