"""No image can take the process down: corrupt JPEG 2000 (GDCM aborts) and RLE (Rust panic), time and
memory limits, all through a real Orthanc; and the instance fingerprint a failure is recorded against.

The corrupt instances are first shown to end an unprotected Python process (pydicom's default plugin
order, in a throwaway subprocess), then fetched through ``find_radiograph`` / ``fetch_radiograph``:
this process survives and gets a typed :class:`UndecodableImage` that says what happened.
"""
from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid as uids

from imaging import (DecodeLimits, FolderSource, UndecodableImage, fetch_radiograph, find_radiograph,
                     instance_fingerprint, locate_studies, read_radiograph, select_frontal, to_display_8bit)
from tests.support.synthetic_cxr import compress, make_corrupt_j2k, make_corrupt_rle, make_cxr, to_bytes, write

ROOT = Path(__file__).resolve().parents[2]

#: What a service did with a decode before: pydicom's default plugin order, inside `except Exception`.
UNPROTECTED = textwrap.dedent("""
    import sys
    import pydicom
    ds = pydicom.dcmread(sys.argv[1])
    try:
        ds.pixel_array
    except Exception as exc:
        print("caught", type(exc).__name__)
    print("survived")
""")


def _unprotected_decode(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", UNPROTECTED, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_corrupt_j2k_aborts_an_unprotected_process(tmp_path):
    result = _unprotected_decode(write(make_corrupt_j2k(), tmp_path / "j2k.dcm"))
    assert result.returncode == -signal.SIGABRT, result.stderr[-500:]
    assert "survived" not in result.stdout and "terminate called" in result.stderr


def test_corrupt_rle_panic_passes_except_exception(tmp_path):
    result = _unprotected_decode(write(make_corrupt_rle(), tmp_path / "rle.dcm"))
    assert result.returncode != 0 and "survived" not in result.stdout and "caught" not in result.stdout
    assert "PanicException" in result.stderr


@pytest.mark.orthanc
def test_corrupt_j2k_from_orthanc_is_undecodable_and_we_survive(orthanc, dicomweb):
    ds = make_corrupt_j2k()
    orthanc.store(ds)
    with pytest.raises(UndecodableImage) as info:
        find_radiograph(dicomweb, accession_number=ds.AccessionNumber)
    err = info.value
    assert err.code == "decoder_crashed"
    message = str(err)
    assert f"instance {ds.SOPInstanceUID}" in message
    assert "the gdcm decoder crashed" in message and "killed by SIGABRT" in message
    assert "JPEG 2000 Image Compression (Lossless Only)" in message
    assert "re-export the image" in message and "service is unaffected" in message
    assert err.sop_instance_uid == ds.SOPInstanceUID
    assert err.fingerprint == instance_fingerprint(ds)
    # still alive, and still decoding: a good image right after
    good = make_cxr(seed=3)
    orthanc.store(compress(good, uids.JPEG2000Lossless))
    image = find_radiograph(dicomweb, accession_number=good.AccessionNumber)
    np.testing.assert_array_equal(image.pixels, to_display_8bit(good))        # lossless: pixel-exact


@pytest.mark.orthanc
def test_corrupt_rle_from_orthanc_is_undecodable_and_we_survive(orthanc, dicomweb):
    ds = make_corrupt_rle()
    orthanc.store(ds)
    [study] = locate_studies(dicomweb, accession_number=ds.AccessionNumber)
    selection = select_frontal(dicomweb, study)
    with pytest.raises(UndecodableImage) as info:
        fetch_radiograph(dicomweb, study, selection)
    err = info.value
    assert err.code == "corrupt_pixel_data"
    message = str(err)
    assert "RLE Lossless" in message and "pylibjpeg: PanicException" in message   # the panic, contained
    assert "pydicom: RuntimeError" in message and "re-export it from the PACS" in message
    assert (err.sop_instance_uid, err.fingerprint) == (ds.SOPInstanceUID, instance_fingerprint(ds))


@pytest.mark.orthanc
def test_decode_time_limit(orthanc, dicomweb):
    ds = make_cxr(seed=4)
    orthanc.store(compress(ds, uids.JPEG2000Lossless))
    with pytest.raises(UndecodableImage) as info:
        find_radiograph(dicomweb, accession_number=ds.AccessionNumber, decode_limits=DecodeLimits(timeout_s=0.01))
    assert info.value.code == "decode_timeout"
    assert "took longer than the 0.01 s limit" in str(info.value) and "DecodeLimits.timeout_s" in str(info.value)
    image = find_radiograph(dicomweb, accession_number=ds.AccessionNumber)     # default limits: decodes
    np.testing.assert_array_equal(image.pixels, to_display_8bit(ds))


def test_decode_memory_limit():
    data = to_bytes(compress(make_cxr(seed=5), uids.RLELossless))
    with pytest.raises(UndecodableImage) as info:
        read_radiograph(data, decode_limits=DecodeLimits(memory_bytes=64 << 10))
    assert info.value.code == "decode_memory_limit"
    assert "64 KiB memory limit" in str(info.value) and "DecodeLimits.memory_bytes" in str(info.value)
    assert read_radiograph(data).pixels.shape == (320, 256)


def test_a_crash_does_not_disturb_concurrent_decodes():
    good = compress(make_cxr(seed=6), uids.JPEG2000Lossless)
    expected = read_radiograph(to_bytes(good)).pixels
    items = [to_bytes(make_corrupt_j2k())] + [to_bytes(good)] * 4 + [to_bytes(make_corrupt_rle())]

    def decode(data: bytes):
        try:
            return read_radiograph(data).pixels
        except UndecodableImage as exc:
            return exc.code

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(decode, items))
    assert results[0] == "decoder_crashed" and results[-1] == "corrupt_pixel_data"
    for pixels in results[1:-1]:
        np.testing.assert_array_equal(pixels, expected)


def test_recorded_failure_answers_without_decoding_until_the_instance_changes(tmp_path):
    """``known_undecodable``: same fingerprint -> the record is raised (no decode); changed -> decoded."""
    good = make_cxr(seed=7)
    corrupt = make_corrupt_j2k(study_uid=good.StudyInstanceUID, series_uid=good.SeriesInstanceUID,
                               accession=good.AccessionNumber, patient_id=good.PatientID)
    corrupt.SOPInstanceUID = corrupt.file_meta.MediaStorageSOPInstanceUID = good.SOPInstanceUID
    file = write(corrupt, tmp_path / "cxr.dcm")
    source = FolderSource(tmp_path)
    with pytest.raises(UndecodableImage) as first:
        find_radiograph(source, accession_number=good.AccessionNumber)
    recorded = first.value
    assert recorded.code == "decoder_crashed" and recorded.fingerprint.startswith("sha256:")
    records = {recorded.sop_instance_uid: recorded}
    asked: list[str] = []

    def known(uid: str) -> UndecodableImage | None:
        asked.append(uid)
        return records.get(uid)

    # Same instance: answered from the record. A time limit no decode could meet shows none was tried.
    with pytest.raises(UndecodableImage) as again:
        find_radiograph(source, accession_number=good.AccessionNumber, known_undecodable=known,
                        decode_limits=DecodeLimits(timeout_s=1e-9))
    assert (again.value.code, str(again.value)) == (recorded.code, str(recorded))
    assert again.value is not recorded and asked == [good.SOPInstanceUID]
    # The PACS gets a corrected copy of the same instance: another fingerprint, so it is decoded.
    write(compress(good, uids.JPEG2000Lossless), file)
    image = find_radiograph(source, accession_number=good.AccessionNumber, known_undecodable=known)
    assert image.sop_instance_uid == good.SOPInstanceUID and len(asked) == 2
    np.testing.assert_array_equal(image.pixels, to_display_8bit(good))


def test_fingerprint_is_stable_and_follows_pixels_and_pixel_headers():
    data = to_bytes(compress(make_cxr(seed=8), uids.JPEG2000Lossless))
    a, b = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(data))
    before = instance_fingerprint(a)
    a.pixel_array, str(a.WindowCenter), str(a.Rows)             # values read and converted in between
    assert instance_fingerprint(a) == before == instance_fingerprint(b)
    b.PatientName = "Other^Name"                                  # not pixel-related: same version
    assert instance_fingerprint(b) == before
    b.WindowCenter = 100
    assert instance_fingerprint(b) != before
    c = pydicom.dcmread(io.BytesIO(data))
    c.PixelData = c.PixelData[:-2] + b"\x00\x00"
    assert instance_fingerprint(c) != before
