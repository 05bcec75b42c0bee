"""Opt-in reduced-resolution JPEG 2000 decoding (``min_short_edge``): pixels, windowing, spacing, notes.

The reference for "a downsampled full decode" is the JPEG 2000 analysis low-pass itself, applied
``n`` times to the full-resolution decode (ISO/IEC 15444-1 Annex F, vertical then horizontal, with
whole-sample symmetric extension). Tolerances:

* lossless (reversible integer 5/3 lifting): 0. The transform is exactly invertible in integers, so
  the LL band the codec stores is exactly the 5/3 low-pass of the stored pixels.
* lossy (irreversible 9/7, float): 1 stored value. The coefficients are quantised, but the full decode
  is their exact synthesis, so analysing it again returns them up to the rounding of the full decode to
  integers and the codec's float32 arithmetic (at most 1 unit here; a real bug is off by hundreds).
"""
from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom import uid as uids
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, get_frame

from imaging import UndecodableImage, find_radiograph, read_radiograph
from imaging.decode import decode_first_frame
from imaging.jpeg2000 import decode_first_frame_reduced
from imaging.render import render, render_reduced
from imaging.windowing import to_display
from tests.support.synthetic_cxr import compress, make_cxr, make_multiframe, make_study, to_bytes

# CDF 9/7 lifting constants (ISO/IEC 15444-1 Table F.4).
ALPHA, BETA, GAMMA, DELTA, K97 = (-1.586134342059924, -0.052980118572961, 0.882911075530934,
                                  0.443506852043971, 1.230174104914001)


def _lift(even, odd, n_samples, c_odd, c_even, floor: bool):
    """One predict + update lifting pair along axis 0, with whole-sample symmetric extension."""
    nxt = np.concatenate([even[1:], even[-1:]]) if n_samples % 2 == 0 else even[1:]   # x[2k+2], x[N] = x[N-2]
    if floor:   # 5/3: d = x_odd - floor((x_even + x_next) / 2); s = x_even + floor((d_prev + d + 2) / 4)
        odd = odd - np.floor_divide(even[:odd.shape[0]] + nxt, 2)
    else:
        odd = odd + c_odd * (even[:odd.shape[0]] + nxt)
    d_prev = np.concatenate([odd[:1], odd])[:even.shape[0]]                            # d[-1] = d[0]
    d_next = np.concatenate([odd, odd[-1:]])[:even.shape[0]]                           # d[M] = d[M-1]
    if floor:
        return even + np.floor_divide(d_prev + d_next + 2, 4), odd
    return even + c_even * (d_prev + d_next), odd


def _low_pass(x: np.ndarray, axis: int, reversible: bool) -> np.ndarray:
    """The low-pass (L) half of one 1-D analysis level along ``axis``."""
    x = np.moveaxis(x, axis, 0)
    n = x.shape[0]
    even, odd = x[0::2], x[1::2]
    if reversible:
        even, _ = _lift(even, odd, n, 0, 0, floor=True)
    else:
        even, odd = _lift(even, odd, n, ALPHA, BETA, floor=False)
        even, _ = _lift(even, odd, n, GAMMA, DELTA, floor=False)
        even = even / K97
    return np.moveaxis(even, 0, axis)


def ll_band(full: np.ndarray, levels: int, *, reversible: bool, bits: int, signed: bool = False) -> np.ndarray:
    """(h, w) int64: the LL band after ``levels`` 2-D analysis levels of ``full`` (H, W) stored values."""
    x = full.astype(np.int64 if reversible else np.float64)
    for _ in range(levels):
        x = _low_pass(_low_pass(x, 0, reversible), 1, reversible)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return np.clip(np.rint(x), lo, hi).astype(np.int64)      # the codec clamps to the sample range


def _stored(ds) -> np.ndarray:
    return decode_first_frame(ds, "test")[0]


# -- pixels equal the codec's low-pass of the full decode ------------------------------------------------
@pytest.mark.parametrize("rows, cols, min_short_edge, levels", [
    (320, 256, 128, 1),     # short edge 256 -> 128
    (320, 256, 64, 2),      # -> 80 x 64
    (321, 255, 100, 1),     # odd sizes: 161 x 128; reduce=2 would be 81 x 64, short of 100
])
@pytest.mark.parametrize("bits", [12, 16])
def test_lossless_reduced_decode_is_exactly_the_5_3_low_pass_of_the_full_decode(rows, cols, min_short_edge,
                                                                               levels, bits):
    ds = compress(make_cxr(bits=bits, rows=rows, cols=cols), uids.JPEG2000Lossless)
    full = _stored(ds)
    pixels, notes, n = render_reduced(ds, min_short_edge=min_short_edge)
    assert n == levels
    expected_stored = ll_band(full, n, reversible=True, bits=bits)
    assert pixels.shape == expected_stored.shape == (-(-rows // 2 ** n), -(-cols // 2 ** n))
    assert min(pixels.shape) >= min_short_edge
    # Same VOI on fewer pixels: the displayed image is the file's window applied to the LL band.
    expected, _ = to_display(ds, expected_stored.astype(full.dtype), "MONOCHROME2")
    np.testing.assert_array_equal(pixels, expected)
    assert notes[1:] == render(ds)[1]                     # same window note as the full decode


@pytest.mark.parametrize("bits", [12, 16])
def test_lossy_reduced_decode_matches_the_9_7_low_pass_within_one_stored_value(bits):
    ds = compress(make_cxr(bits=bits, rows=320, cols=256), uids.JPEG2000)
    full = _stored(ds)
    for min_short_edge, levels in ((128, 1), (64, 2)):
        pixels, notes, n = render_reduced(ds, min_short_edge=min_short_edge)
        stored, _, n2, _ = decode_first_frame_reduced(ds, "test", min_short_edge)
        assert n == n2 == levels
        diff = np.abs(stored.astype(np.int64) - ll_band(full, n, reversible=False, bits=bits))
        assert diff.max() <= 1, diff.max()


@pytest.mark.parametrize("bits_allocated, bits, signed", [(8, 8, False), (16, 12, True), (16, 16, True)])
def test_sample_formats_come_back_as_pydicom_would_give_them(bits_allocated, bits, signed):
    # Pillow (which does the reduced decode) scales samples to 8/16 bits and offsets signed ones;
    # the stored values and dtype must come back exactly.
    ds = make_cxr(bits=12, rows=128, cols=96, windows=False)
    rng = np.random.default_rng(1)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    smooth = np.linspace(lo, hi, 128 * 96).reshape(128, 96)
    arr = np.clip(smooth + rng.normal(0, (hi - lo) / 50, smooth.shape), lo, hi).astype(dtype)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_allocated, bits, bits - 1, int(signed)
    ds.PixelData = arr.tobytes()
    ds = compress(ds, uids.JPEG2000Lossless)
    stored, photometric, n, _ = decode_first_frame_reduced(ds, "test", 48)
    assert (n, stored.dtype, photometric) == (1, dtype, "MONOCHROME2")
    np.testing.assert_array_equal(stored, ll_band(_stored(ds), 1, reversible=True, bits=bits, signed=signed))


def test_multi_frame_j2k_reduces_the_first_frame():
    ds = compress(make_multiframe(frames=2, bits=12, rows=128, cols=96), uids.JPEG2000Lossless)
    pixels, notes, n = render_reduced(ds, min_short_edge=48)
    assert n == 1 and pixels.shape == (64, 48)
    assert notes[:2] == ("decoded at 1/2 resolution (J2K reduce=1): 48x64 of 96x128, short edge >= 48 px",
                         "multi-frame image (2 frames): used frame 1")
    expected, _ = to_display(ds, ll_band(_stored(ds), 1, reversible=True, bits=12).astype(np.uint16), "MONOCHROME2")
    np.testing.assert_array_equal(pixels, expected)


def test_the_real_rg1_cr_chest_decodes_at_half_resolution():
    # RG1: CR chest PA, 1955 x 1841, 15-bit MONOCHROME1, J2K lossless (pydicom-data).
    path = get_testdata_file("RG1_J2KR.dcm")
    full = read_radiograph(path)
    image = read_radiograph(path, min_short_edge=512)
    assert full.pixels.shape == (1955, 1841) and image.pixels.shape == (978, 921)
    assert "decoded at 1/2 resolution (J2K reduce=1): 921x978 of 1841x1955, short edge >= 512 px" in image.notes
    assert "inverted (MONOCHROME1)" in image.notes
    ds = pydicom.dcmread(path)
    expected, _ = to_display(ds, ll_band(_stored(ds), 1, reversible=True, bits=15).astype(np.uint16),
                             "MONOCHROME1")
    np.testing.assert_array_equal(image.pixels, expected)
    assert full.pixel_spacing is None and image.pixel_spacing is None     # RG1 records none


# -- the option's contract ------------------------------------------------------------------------------
def test_note_spacing_and_bytes_through_read_radiograph():
    ds = compress(make_cxr(bits=12, rows=640, cols=512), uids.JPEG2000Lossless)
    data = to_bytes(ds)
    full = read_radiograph(data)
    image = read_radiograph(data, min_short_edge=128)
    assert image.pixels.shape == (160, 128) and image.pixels.dtype == np.uint8
    assert image.notes[0] == "decoded at 1/4 resolution (J2K reduce=2): 128x160 of 512x640, short edge >= 128 px"
    assert image.notes[1:] == full.notes
    assert full.pixel_spacing == (0.139, 0.139)
    assert image.pixel_spacing == pytest.approx((0.556, 0.556))
    assert image.bytes_transferred == full.bytes_transferred == len(data)
    assert image.study_json()["rows"] == 160 and "decoded at 1/4" in image.study_json()["notes"][0]


@pytest.mark.parametrize("min_short_edge", [None, 0])
def test_default_and_zero_keep_the_full_resolution(min_short_edge):
    ds = compress(make_cxr(bits=12, rows=320, cols=256), uids.JPEG2000Lossless)
    pixels, notes, n = render_reduced(ds, min_short_edge=min_short_edge)
    assert n == 0 and pixels.shape == (320, 256)
    np.testing.assert_array_equal(pixels, render(ds)[0])
    assert not any("resolution" in note for note in notes)


def test_an_image_already_near_the_requested_size_is_decoded_in_full():
    ds = compress(make_cxr(bits=12, rows=320, cols=256), uids.JPEG2000Lossless)
    pixels, notes, n = render_reduced(ds, min_short_edge=129)     # 128 would be too small
    assert n == 0 and pixels.shape == (320, 256) and notes == render(ds)[1]


@pytest.mark.parametrize("ts", [uids.ExplicitVRLittleEndian, uids.RLELossless, uids.JPEGLSLossless,
                                uids.JPEGLosslessSV1])
def test_other_transfer_syntaxes_ignore_the_option(ts):
    ds = compress(make_cxr(bits=12, rows=320, cols=256), ts)
    image = read_radiograph(to_bytes(ds), min_short_edge=64)
    full = read_radiograph(to_bytes(ds))
    assert image.pixels.shape == (320, 256)
    np.testing.assert_array_equal(image.pixels, full.pixels)
    assert image.notes == full.notes and image.pixel_spacing == full.pixel_spacing


def test_a_negative_min_short_edge_is_refused():
    ds = make_cxr(rows=64, cols=64)
    with pytest.raises(ValueError, match=r"min_short_edge must be >= 0 \(0 or None = full resolution\), not -1"):
        render(ds, min_short_edge=-1)


@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_corrupt_j2k_data_gives_the_same_error_with_the_option(damage):
    ds = compress(make_cxr(bits=12, rows=320, cols=256), uids.JPEG2000Lossless)
    codestream = get_frame(ds.PixelData, 0, number_of_frames=1)
    # Keep the main header (so the reduced path is tried) and damage the tile data behind it. With one
    # quality layer the low resolutions come first, so a truncated stream must still be refused.
    sot = codestream.find(b"\xff\x90")
    if damage == "garbled":
        codestream = codestream[:sot + 200] + bytes(len(codestream) - sot - 200)
    else:
        codestream = codestream[:sot + (len(codestream) - sot) // 2]
    ds.PixelData = encapsulate([codestream + b"\0" * (len(codestream) % 2)])
    with pytest.raises(UndecodableImage, match=r"could not be decoded .*re-export it from the PACS") as full_exc:
        render(copy.deepcopy(ds))
    with pytest.raises(UndecodableImage, match=r"could not be decoded .*re-export it from the PACS") as reduced_exc:
        render(ds, min_short_edge=64)
    assert reduced_exc.value.code == full_exc.value.code == "corrupt_pixel_data"


def test_find_radiograph_passes_the_option_through_pacs_and_folder(store_study):
    study = [compress(ds, uids.JPEG2000Lossless) for ds in make_study(("PA", "LL"), bits=12, rows=320, cols=256)]
    source = store_study(*study)
    image = find_radiograph(source, accession_number=study[0].AccessionNumber, min_short_edge=128)
    assert image.view_position == "PA" and image.pixels.shape == (160, 128)
    assert image.notes[0].startswith("decoded at 1/2 resolution (J2K reduce=1)")
    assert image.pixel_spacing == pytest.approx((0.278, 0.278))
    assert image.bytes_transferred and image.bytes_transferred > 0
