"""DICOM -> displayed 8-bit pixels: LUTs, inversion, padding, colour, frames, guards."""
from __future__ import annotations

import copy
import io

import numpy as np
import pydicom
import pytest
from pydicom import uid as uids

from imaging import MAX_PIXELS, UndecodableImage, UnsupportedImage, to_display_8bit
from imaging.decode import missing_decoder_message
from imaging.render import render
from tests.support.synthetic_cxr import (compress, make_ct, make_cxr, make_multiframe, make_presentation_state,
                                         make_rgb_secondary_capture, to_bytes)


def _reread(ds):
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)))


def _expected_linear(stored, center, width):
    """PS3.3 C.11.2.1.2.1 LINEAR window, written out independently, to uint8."""
    x = stored.astype(np.float64)
    y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.rint(y * 255).astype(np.uint8)


def test_monochrome2_uses_the_first_of_several_windows():
    ds = make_cxr(bits=12)
    pixels, notes = render(ds)
    assert pixels.dtype == np.uint8 and pixels.shape == (320, 256)
    expected = _expected_linear(ds.pixel_array, float(ds.WindowCenter[0]), float(ds.WindowWidth[0]))
    np.testing.assert_array_equal(pixels, expected)
    assert notes == ("VOI: window 1843/2457 (LINEAR), first of 2",)


def test_monochrome1_is_inverted_to_look_like_monochrome2():
    mono2 = to_display_8bit(make_cxr(photometric="MONOCHROME2", seed=3))
    ds = make_cxr(photometric="MONOCHROME1", seed=3)
    mono1, notes = render(ds)
    assert "inverted (MONOCHROME1)" in notes
    assert np.abs(mono1.astype(int) - mono2).max() <= 1          # rounding of the mirrored window only
    assert mono1[0, 0] < 20                                       # air outside the patient stays black


def test_presentation_lut_shape_inverse_inverts_monochrome2():
    ds = make_cxr()
    plain = to_display_8bit(ds)
    ds.PresentationLUTShape = "INVERSE"
    inverted, notes = render(ds)
    np.testing.assert_array_equal(inverted.astype(int), 255 - plain.astype(int))
    assert "inverted (Presentation LUT Shape INVERSE)" in notes


def test_16_bit_voi_lut_sequence_wins_over_windows():
    ds = _reread(make_cxr(bits=16, voi_lut=True))
    ds.WindowCenter, ds.WindowWidth = 100, 10                     # must be ignored: the LUT comes first
    pixels, notes = render(ds)
    stored = ds.pixel_array.astype(np.float64)
    expected = np.rint(np.round(65535 * (stored / 65535) ** 0.7) / 65535 * 255).astype(np.uint8)
    assert np.abs(pixels.astype(int) - expected).max() <= 1
    assert notes == ("VOI: VOI LUT Sequence 'GAMMA 0.7'",)


@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT"])
def test_voi_lut_function(function):
    ds = make_cxr(bits=12)
    ds.VOILUTFunction = function
    center, width = float(ds.WindowCenter[0]), float(ds.WindowWidth[0])
    x = ds.pixel_array.astype(np.float64)
    if function == "SIGMOID":
        y = 1 / (1 + np.exp(-4 * (x - center) / width))
    else:
        y = np.clip((x - center) / width + 0.5, 0, 1)
    pixels, notes = render(ds)
    np.testing.assert_array_equal(pixels, np.rint(y * 255).astype(np.uint8))
    assert notes[0].endswith(f"({function}), first of 2")


def test_modality_lut_is_applied_before_the_window():
    ds = make_cxr(bits=12)
    raw = to_display_8bit(ds)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100               # window now in rescaled units
    ds.WindowCenter = [float(c) * 2 - 100 for c in ds.WindowCenter]
    ds.WindowWidth = [float(w) * 2 for w in ds.WindowWidth]
    assert np.abs(to_display_8bit(ds).astype(int) - raw).max() <= 1


def test_no_window_uses_a_robust_percentile_window():
    ds = make_cxr(windows=False)
    ds.PixelData = (ds.pixel_array // 4).astype(np.uint16).tobytes()   # a dim image using 1/4 of the range
    pixels, notes = render(ds)
    assert notes[0].startswith("VOI: none in file; percentile window 0.5-99.5%")
    assert pixels.min() == 0 and pixels.max() == 255                    # stretched to the full range


def test_invalid_window_width_falls_back_to_percentiles():
    ds = make_cxr()
    ds.WindowWidth = [0, 0]
    pixels, notes = render(ds)
    assert notes[0] == "invalid WindowWidth 0: ignored"
    assert notes[1].startswith("VOI: none in file")


def test_pixel_padding_value_becomes_black_and_stays_out_of_the_window():
    ds = make_cxr(windows=False)
    arr = ds.pixel_array.copy()
    arr[:, :20] = 4095                                            # a bright collimator border, marked as padding
    ds.PixelData = arr.tobytes()
    ds.PixelPaddingValue = 4095
    pixels, notes = render(ds)
    assert (pixels[:, :20] == 0).all()
    assert notes[0] == f"PixelPaddingValue 4095: {320 * 20} padding pixels set to black"
    assert pixels[:, 20:].max() == 255                            # percentiles from real pixels only


def test_rgb_secondary_capture_becomes_grayscale():
    ds = make_rgb_secondary_capture()
    pixels, notes = render(ds)
    rgb = ds.pixel_array.astype(np.float64)
    expected = np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)
    assert notes == ("RGB image converted to grayscale",)


def test_jpeg_baseline_colour_becomes_grayscale():
    source = make_rgb_secondary_capture()
    ds = compress(source, uids.JPEGBaseline8Bit)
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    pixels, notes = render(ds)
    assert np.abs(pixels.astype(int) - to_display_8bit(source)).mean() < 2     # lossy, but the same image
    assert notes == ("YBR_FULL_422 image converted to grayscale",)
    assert notes == (f"{ds.PhotometricInterpretation} image converted to grayscale",)


def test_multi_frame_gives_the_first_frame_and_says_so():
    ds = make_multiframe(frames=3)
    pixels, notes = render(ds)
    first = _expected_linear(ds.pixel_array[0], float(ds.WindowCenter[0]), float(ds.WindowWidth[0]))
    np.testing.assert_array_equal(pixels, first)
    assert notes[0] == "multi-frame image (3 frames): used frame 1"


def test_signed_ct_with_rescale_decodes():
    pixels = to_display_8bit(make_ct())
    assert pixels.shape == (64, 64) and pixels.max() > pixels.min()


def test_pixel_limit_guards_against_decompression_bombs():
    ds = make_cxr(rows=64, cols=64)
    with pytest.raises(UnsupportedImage, match=r"is 64x64 = 0.0 megapixels, over the limit of 0.0; if this is a "
                                               r"genuine radiograph raise the pixel limit") as info:
        to_display_8bit(ds, max_pixels=4000)
    assert info.value.code == "image_too_large"
    bomb = copy.deepcopy(ds)
    bomb.Rows = bomb.Columns = 65535                              # header claims 4.3 gigapixels
    with pytest.raises(UnsupportedImage, match="65535x65535 = 4294.8 megapixels"):
        to_display_8bit(bomb)
    assert MAX_PIXELS == 40_000_000


def test_no_pixel_data_is_unsupported():
    ds = make_presentation_state(study_uid=pydicom.uid.generate_uid())
    with pytest.raises(UnsupportedImage, match=r"has no Pixel Data \(SOP class 1.2.840.10008.5.1.4.1.1.11.1, "
                                               r"modality PR\); it is not an image"):
        to_display_8bit(ds)


def test_unsupported_photometric_interpretation():
    ds = make_cxr()
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(UnsupportedImage, match="Photometric Interpretation 'HSV'; supported: MONOCHROME1"):
        to_display_8bit(ds)


def test_truncated_native_pixel_data_is_undecodable():
    ds = make_cxr()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(UndecodableImage, match=r"'Explicit VR Little Endian' \(1.2.840.10008.1.2.1\) could not be "
                                               r"decoded .*truncated or corrupt") as info:
        to_display_8bit(ds)
    assert info.value.code == "corrupt_pixel_data"


def test_corrupt_jpeg2000_codestream_is_undecodable():
    ds = compress(make_cxr(), uids.JPEG2000Lossless)
    frame = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    data = next(frame)
    ds.PixelData = pydicom.encaps.encapsulate([data[:200]])      # the first 200 bytes of the codestream
    with pytest.raises(UndecodableImage, match=r"transfer syntax 'JPEG 2000 Image Compression \(Lossless Only\)'"):
        to_display_8bit(ds)


def test_transfer_syntax_without_any_decoder_says_what_to_do():
    ds = compress(make_cxr(), uids.JPEG2000Lossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.110"  # JPEG XL: no pydicom decoder
    with pytest.raises(UndecodableImage, match=r"no Python decoder exists for transfer syntax "
                                               r"'1.2.840.10008.1.2.4.110'; ask the PACS to store or send it as "
                                               r"Explicit VR Little Endian") as info:
        to_display_8bit(ds)
    assert info.value.code == "decoder_missing"


def test_missing_decoder_message_names_the_package():
    assert missing_decoder_message(uids.JPEG2000Lossless) == (
        "no decoder installed for transfer syntax 'JPEG 2000 Image Compression (Lossless Only)' "
        "(1.2.840.10008.1.2.4.90); install pylibjpeg-openjpeg (or python-gdcm)")
    assert "install pyjpegls" in missing_decoder_message(uids.JPEGLSLossless)


def test_dataset_without_transfer_syntax_is_undecodable():
    ds = make_cxr()
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(UndecodableImage, match=r"has no \(0002,0010\) Transfer Syntax UID"):
        to_display_8bit(ds)


def test_missing_rows_is_a_corrupt_header():
    ds = make_cxr()
    del ds.Rows
    with pytest.raises(UndecodableImage, match=r"has Pixel Data but no valid Rows/Columns \(Nonex256\); the header is corrupt"):
        to_display_8bit(ds)


def test_two_samples_per_pixel_is_unsupported():
    ds = make_cxr()
    ds.SamplesPerPixel = 2
    with pytest.raises(UnsupportedImage, match="has 2 samples per pixel; only 1 \\(grayscale\\) or 3 \\(colour\\)"):
        to_display_8bit(ds)


def test_broken_voi_lut_items():
    ds = _reread(make_cxr(bits=12, voi_lut=True))
    del ds.VOILUTSequence[0].LUTData
    with pytest.raises(UndecodableImage, match="VOI LUT Sequence item has no LUTData; the header is corrupt"):
        to_display_8bit(ds)
    ds = _reread(make_cxr(bits=12, voi_lut=True))
    del ds.VOILUTSequence[0].LUTDescriptor
    with pytest.raises(UndecodableImage, match="VOI LUT Sequence item has no valid LUTDescriptor \\(None\\)"):
        to_display_8bit(ds)


def test_weighted_percentiles_match_numpy_lower():
    from imaging.windowing import _weighted_percentiles

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 50, size=1001)
    levels = np.arange(50, dtype=np.float64)[::-1]                 # unsorted levels, as after a LUT
    counts = np.bincount(pixels, minlength=50)[::-1]
    got = _weighted_percentiles(levels, counts, (0.5, 99.5))
    assert got == tuple(np.percentile(pixels, (0.5, 99.5), method="lower"))
