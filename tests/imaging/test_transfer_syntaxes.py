"""Every transfer syntax a PACS commonly stores, through the file path and through Orthanc (as stored)."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom import uid as uids

from imaging import find_radiograph, read_radiograph, to_display_8bit
from tests.support.synthetic_cxr import TRANSFER_SYNTAXES, compress, make_cxr, to_bytes

SYNTAXES = sorted(TRANSFER_SYNTAXES)


def _source_for(ts: str, **kwargs):
    # JPEG Baseline holds 8-bit samples only; everything else gets 12-bit data (JPEG Extended's maximum).
    return make_cxr(bits=8 if ts == uids.JPEGBaseline8Bit else 12, rows=96, cols=80, **kwargs)


@pytest.mark.parametrize("ts", SYNTAXES, ids=[uids.UID(t).keyword or t for t in SYNTAXES])
def test_file_in_every_transfer_syntax(ts):
    source = _source_for(ts, seed=1)
    encoded = compress(source, ts)
    assert encoded.file_meta.TransferSyntaxUID == ts
    image = read_radiograph(to_bytes(encoded))
    expected = to_display_8bit(source)
    if TRANSFER_SYNTAXES[ts]:
        np.testing.assert_array_equal(encoded.pixel_array, source.pixel_array)   # stored values, exact
        np.testing.assert_array_equal(image.pixels, expected)                    # and what is displayed
    else:
        assert np.abs(image.pixels.astype(int) - expected).mean() < 3
    assert image.sop_instance_uid == source.SOPInstanceUID


@pytest.mark.orthanc
@pytest.mark.parametrize("ts", SYNTAXES, ids=[uids.UID(t).keyword or t for t in SYNTAXES])
def test_orthanc_returns_the_stored_syntax_and_we_decode_it(ts, orthanc, dicomweb):
    source = _source_for(ts, seed=2)
    encoded = compress(source, ts)
    orthanc.store(encoded)
    image = find_radiograph(dicomweb, accession_number=source.AccessionNumber)
    # bytes on the wire ~ the stored file: Orthanc was not asked to transcode
    assert len(to_bytes(encoded)) * 0.9 < image.bytes_transferred < len(to_bytes(encoded)) + 2048
    retrieved = dicomweb.retrieve_instance(image.study_instance_uid, image.series_instance_uid,
                                           image.sop_instance_uid).dataset
    assert retrieved.file_meta.TransferSyntaxUID == ts                           # as stored
    if TRANSFER_SYNTAXES[ts]:
        # (rows, cols) stored values, exact: the PACS round trip lost nothing before any display stage
        np.testing.assert_array_equal(retrieved.pixel_array, source.pixel_array)
        np.testing.assert_array_equal(image.pixels, to_display_8bit(source))
    else:
        assert np.abs(image.pixels.astype(int) - to_display_8bit(source)).mean() < 3


@pytest.mark.orthanc
def test_orthanc_survived_the_retrievals(orthanc):
    # A transcoding crash (IMAGING_FHIR.md §1.4) would show up here rather than as later connection errors.
    assert orthanc.alive()
