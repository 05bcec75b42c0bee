"""DICOM pixel data -> the 8-bit grayscale image a radiologist would see (MONOCHROME2).

Order (PS3.4 N.2 grayscale pipeline): decode the first frame -> Modality LUT (rescale or LUT) ->
VOI LUT (VOI LUT Sequence, else the first window with ``VOILUTFunction``, else a robust percentile
window) -> Presentation LUT (``INVERSE`` / MONOCHROME1 inversion) -> padding to black -> uint8.
Pure: takes a Dataset, returns an array; the caller decides where the Dataset came from.
"""
from __future__ import annotations

import numpy as np
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder

from .errors import UndecodableImage, UnsupportedImage

#: Default pixel-count limit per frame (Rows x Columns): decompression-bomb guard. A large CR plate
#: is ~4300 x 3500 = 15 MP; 40 MP leaves room without letting a 65535 x 65535 header allocate 8 GB.
MAX_PIXELS = 40_000_000

#: Percentiles of the robust window used when the file carries no VOI at all.
PERCENTILE_WINDOW = (0.5, 99.5)

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
                         "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")

#: Image storage SOP classes we may meet as radiographs (CR, DX, SC, CT): no Pixel Data = truncated.
IMAGE_STORAGE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4", "1.2.840.10008.5.1.4.1.1.2",
})

_JPEG = "pylibjpeg-libjpeg (or python-gdcm)"
#: Transfer syntax -> the package(s) that decode it with pydicom.
DECODER_PACKAGES: dict[str, str] = {
    uids.JPEGBaseline8Bit: _JPEG,
    uids.JPEGExtended12Bit: _JPEG,
    uids.JPEGLossless: _JPEG,
    uids.JPEGLosslessSV1: _JPEG,
    uids.JPEGLSLossless: "pyjpegls (or pylibjpeg-libjpeg, python-gdcm)",
    uids.JPEGLSNearLossless: "pyjpegls (or pylibjpeg-libjpeg, python-gdcm)",
    uids.JPEG2000Lossless: "pylibjpeg-openjpeg (or python-gdcm)",
    uids.JPEG2000: "pylibjpeg-openjpeg (or python-gdcm)",
    uids.HTJ2KLossless: "pylibjpeg-openjpeg>=2.2",
    uids.HTJ2KLosslessRPCL: "pylibjpeg-openjpeg>=2.2",
    uids.HTJ2K: "pylibjpeg-openjpeg>=2.2",
    uids.RLELossless: "pylibjpeg-rle (pydicom's own RLE decoder needs nothing)",
}


def _ts_name(ts: str) -> str:
    name = uids.UID(ts).name
    return f"'{name}' ({ts})" if name != ts else f"'{ts}'"


def missing_decoder_message(transfer_syntax_uid: str) -> str:
    """What to say when pydicom has no working decoder for ``transfer_syntax_uid``."""
    package = DECODER_PACKAGES.get(transfer_syntax_uid)
    if package:
        return (f"no decoder installed for transfer syntax {_ts_name(transfer_syntax_uid)}; "
                f"install {package}")
    return (f"no Python decoder exists for transfer syntax {_ts_name(transfer_syntax_uid)}; "
            "ask the PACS to store or send it as Explicit VR Little Endian (1.2.840.10008.1.2.1)")


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, default)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _first(value):
    """First value of a possibly multi-valued element (WindowCenter "2048\\1024" -> 2048)."""
    if value is None:
        return None
    try:
        return value[0] if not isinstance(value, (str, bytes)) and len(value) > 0 else value
    except TypeError:
        return value


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window to [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:                                   # LINEAR with width 1 is a threshold
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def decode_first_frame(ds: Dataset, what: str) -> tuple[np.ndarray, str]:
    """(H, W) or (H, W, 3) array of the first frame, and the photometric interpretation after decoding.

    No size or photometric guards: :func:`render` checks those before calling this.
    """
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not ts:
        raise UndecodableImage(f"{what} has no (0002,0010) Transfer Syntax UID, so its pixel data cannot "
                               "be interpreted; re-export it as a DICOM Part 10 file", code="no_transfer_syntax")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise UndecodableImage(f"{what}: {missing_decoder_message(ts)}", code="decoder_missing") from exc
    if not decoder.is_available:
        raise UndecodableImage(f"{what}: {missing_decoder_message(ts)}", code="decoder_missing")
    frames = _int(ds, "NumberOfFrames", 1) or 1
    try:
        arr, info = decoder.as_array(ds, index=0 if frames > 1 else None, as_rgb=True)
    except (ValueError, RuntimeError, EOFError, KeyError, IndexError, TypeError, AttributeError,
            NotImplementedError, OverflowError) as exc:
        detail = str(exc).strip().splitlines()
        raise UndecodableImage(
            f"{what}: pixel data in transfer syntax {_ts_name(ts)} could not be decoded "
            f"({type(exc).__name__}: {' '.join(detail)[:300]}); the file is probably truncated or corrupt: "
            "re-export it from the PACS", code="corrupt_pixel_data") from exc
    photometric = str(info.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
    return arr, photometric


def render(ds: Dataset, *, max_pixels: int = MAX_PIXELS, what: str | None = None
           ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Like :func:`to_display_8bit`, also returning notes on what was done (frame, window, inversion).

    Parameters
    ----------
    ds
        A full DICOM dataset with pixel data (any transfer syntax pydicom can decode).
    max_pixels
        Refuse frames with more than this many pixels (Rows x Columns) before decoding.
    what
        How to name the image in messages (defaults to ``instance <SOPInstanceUID>``).

    Returns
    -------
    pixels : np.ndarray
        (H, W) uint8, MONOCHROME2.
    notes : tuple of str
        Human-readable notes, e.g. ``"VOI: window 1843/2457 (LINEAR), first of 2"``.

    Raises
    ------
    UnsupportedImage
        No pixel data, unsupported photometric interpretation or sample layout, over ``max_pixels``.
    UndecodableImage
        No decoder for the transfer syntax (the message names the package), or corrupt/truncated data.
    """
    what = what or f"instance {ds.get('SOPInstanceUID', '(no SOPInstanceUID)')}"
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if str(ds.get("SOPClassUID", "")) in IMAGE_STORAGE_CLASSES:
            raise UndecodableImage(f"{what} has no Pixel Data although its SOP class {ds.SOPClassUID} is an image; "
                                   "the file is probably truncated: re-export it from the PACS", code="truncated")
        raise UnsupportedImage(f"{what} has no Pixel Data (SOP class {ds.get('SOPClassUID', 'unknown')}, "
                               f"modality {ds.get('Modality', 'unknown')}); it is not an image",
                               code="no_pixel_data")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not cols or rows < 0 or cols < 0:
        raise UndecodableImage(f"{what} has Pixel Data but no valid Rows/Columns ({rows}x{cols}); "
                               "the header is corrupt", code="bad_image_header")
    if rows * cols > max_pixels:
        raise UnsupportedImage(
            f"{what} is {cols}x{rows} = {rows * cols / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.1f}; if this is a genuine radiograph raise the pixel limit", code="image_too_large")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnsupportedImage(f"{what} has Photometric Interpretation {photometric or '(none)'!r}; "
                               f"supported: {', '.join(SUPPORTED_PHOTOMETRIC)}", code="unsupported_photometric")
    samples = _int(ds, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise UnsupportedImage(f"{what} has {samples} samples per pixel; only 1 (grayscale) or 3 (colour) "
                               "are supported", code="unsupported_samples")

    arr, decoded_photometric = decode_first_frame(ds, what)
    return to_display(ds, arr, decoded_photometric)


def to_display(ds: Dataset, arr: np.ndarray, decoded_photometric: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decoded first frame ((H, W) stored values or (H, W, 3) RGB) -> ((H, W) uint8 MONOCHROME2, notes)."""
    notes: list[str] = []
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if frames > 1:
        notes.append(f"multi-frame image ({frames} frames): used frame 1")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)                     # (H, W, 3), 8 or 16 bit per channel
        decoded_photometric = "RGB"
    if arr.ndim == 3:
        # (H, W, 3) RGB after pydicom's YBR->RGB conversion: ITU-R BT.601 luma, no LUTs apply to colour.
        full = 65535.0 if arr.dtype.itemsize > 1 and arr.max() > 255 else 255.0
        gray = (arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114) / full
        notes.append(f"{photometric} image converted to grayscale")
        return np.rint(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8), tuple(notes)

    stored = arr                                           # (H, W) stored values
    padding = _padding_mask(ds, stored, notes)
    # Every stage below is a function of the stored value alone, so for integer data compute it once per
    # stored level (<= 65536 of them) and gather: ~10x faster than float maths on 7.5 megapixels.
    lo, hi = (int(stored.min()), int(stored.max())) if stored.dtype.kind in "iu" else (0, -1)
    if hi >= lo and hi - lo < 1 << 17:
        levels = np.arange(lo, hi + 1, dtype=np.int64)     # (L,) stored values
        index = (stored.astype(np.int64) - lo).astype(np.intp)   # (H, W) -> level
        counts = np.bincount(index.ravel(), minlength=levels.size)
        if padding is not None:
            counts = counts - np.bincount(index[padding], minlength=levels.size)
    else:                                                  # float data or a huge range: one level per pixel
        levels, index = stored.ravel(), np.arange(stored.size).reshape(stored.shape)
        counts = np.ones(levels.size, dtype=np.int64) if padding is None else (~padding).ravel().astype(np.int64)
    values = np.asarray(apply_modality_lut(levels, ds), dtype=np.float64)   # (L,) modality units
    display = _voi(ds, values, counts, notes)              # (L,) float in [0, 1]
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if decoded_photometric == "MONOCHROME1" or shape == "INVERSE":
        display = 1.0 - display                            # MONOCHROME1 / INVERSE: minimum = white
        notes.append("inverted (MONOCHROME1)" if decoded_photometric == "MONOCHROME1"
                     else "inverted (Presentation LUT Shape INVERSE)")
    out = np.rint(np.clip(display, 0.0, 1.0) * 255.0).astype(np.uint8)[index]   # (H, W) uint8
    if padding is not None:
        out[padding] = 0                                   # padding is outside the patient: black
    return out, tuple(notes)


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray, percents: tuple[float, float]
                          ) -> tuple[float, float]:
    """Percentiles of a distribution given as (value, pixel count) pairs (lower value at each rank)."""
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(counts[order])
    if cdf.size == 0 or cdf[-1] <= 0:
        return float(values.min(initial=0.0)), float(values.max(initial=1.0))
    ranks = [max(0.0, p / 100.0 * (cdf[-1] - 1)) for p in percents]
    picks = np.searchsorted(cdf, np.floor(ranks) + 1, side="left")   # numpy method="lower"
    return tuple(float(values[order][min(i, cdf.size - 1)]) for i in picks)


def to_display_8bit(ds: Dataset, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image as displayed: (H, W) uint8, MONOCHROME2 (0 = black).

    Applies the Modality LUT, the VOI LUT (VOI LUT Sequence, else the first WindowCenter/Width with
    ``VOILUTFunction`` LINEAR/LINEAR_EXACT/SIGMOID, else a 0.5-99.5 percentile window), MONOCHROME1 or
    ``PresentationLUTShape`` INVERSE inversion and ``PixelPaddingValue``; RGB/YBR/palette images become
    grayscale; a multi-frame image gives its first frame.

    Parameters
    ----------
    ds
        A full DICOM dataset with pixel data.
    max_pixels
        Pixel-count limit per frame (decompression-bomb guard).

    Returns
    -------
    np.ndarray
        (H, W) uint8.

    Raises
    ------
    UnsupportedImage, UndecodableImage
        See :func:`render`.
    """
    return render(ds, max_pixels=max_pixels)[0]


def _padding_mask(ds: Dataset, stored: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """Pixels equal to PixelPaddingValue (or within it and PixelPaddingRangeLimit), in stored values."""
    pad = _first(ds.get("PixelPaddingValue"))
    if pad is None or isinstance(pad, (bytes, bytearray)):
        return None
    limit = _first(ds.get("PixelPaddingRangeLimit"))
    if limit is not None and not isinstance(limit, (bytes, bytearray)):
        lo, hi = sorted((int(pad), int(limit)))
        mask = (stored >= lo) & (stored <= hi)
    else:
        mask = stored == int(pad)
    if not mask.any():
        return None
    if mask.all():
        notes.append("every pixel equals PixelPaddingValue: padding ignored")
        return None
    notes.append(f"PixelPaddingValue {pad}: {int(mask.sum())} padding pixels set to black")
    return mask


def _lut(ds: Dataset, item: Dataset) -> tuple[np.ndarray, int, int]:
    """(LUT data as float64, first stored value mapped, bits per entry) of a VOI LUT item."""
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UndecodableImage(f"VOI LUT Sequence item has no valid LUTDescriptor "
                               f"({item.get('LUTDescriptor')!r}); the header is corrupt", code="bad_voi_lut") from exc
    entries = entries or 65536                           # 0 means 2**16 entries (PS3.3 C.11.2.1.1)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and first > 32767:
        first -= 65536                                   # descriptor read as US for signed data
    raw = item.get("LUTData")
    if isinstance(raw, (bytes, bytearray)):
        data = np.frombuffer(raw, dtype="<u2" if len(raw) >= 2 * entries else np.uint8)
    else:
        data = np.asarray(raw if raw is not None else [], dtype=np.float64)
    if data.size == 0:
        raise UndecodableImage("VOI LUT Sequence item has no LUTData; the header is corrupt", code="bad_voi_lut")
    return data[:entries].astype(np.float64), first, bits


def _voi(ds: Dataset, values: np.ndarray, counts: np.ndarray, notes: list[str]) -> np.ndarray:
    """Modality-LUT output levels -> [0, 1] through the VOI LUT stage (``counts``: pixels per level)."""
    lut_seq = ds.get("VOILUTSequence")
    if lut_seq:
        item = lut_seq[0]
        lut, first, bits = _lut(ds, item)
        index = np.clip(np.rint(values) - first, 0, lut.size - 1).astype(np.intp)
        out = lut[index]                                 # (H, W) LUT output values
        top = max(float(2 ** bits - 1), float(lut.max()))   # some writers under-state the bit depth
        explanation = f" {str(item.LUTExplanation)!r}" if "LUTExplanation" in item else ""
        notes.append(f"VOI: VOI LUT Sequence{explanation}" + (f", first of {len(lut_seq)}" if len(lut_seq) > 1 else ""))
        return out / (top or 1.0)

    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centers is not None and widths is not None and centers != "" and widths != "":
        center, width = float(_first(centers)), float(_first(widths))
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            notes.append(f"unknown VOILUTFunction {function!r}: used LINEAR")
            function = "LINEAR"
        if width > 0:
            count = len(centers) if not isinstance(centers, (str, float, int)) and hasattr(centers, "__len__") else 1
            several = f", first of {count}" if count > 1 else ""
            notes.append(f"VOI: window {center:g}/{width:g} ({function}){several}")
            return _window(values, center, width, function)
        notes.append(f"invalid WindowWidth {width:g}: ignored")

    lo, hi = _weighted_percentiles(values, counts, PERCENTILE_WINDOW)   # padding has count 0
    if hi <= lo:
        hi = lo + 1.0
    notes.append(f"VOI: none in file; percentile window {PERCENTILE_WINDOW[0]:g}-{PERCENTILE_WINDOW[1]:g}% "
                 f"({lo:g}..{hi:g})")
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)
