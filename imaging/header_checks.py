"""Header checks before any pixel is decoded, and the one message for a malformed pixel-related value.

:func:`check_pixel_header` refuses what must not reach a decoder (no Pixel Data, bad Rows/Columns,
too many pixels, an unsupported photometric interpretation or sample layout); :func:`bad_header_error`
names the attribute the display stages choked on. Also the tolerant header readers the other pixel
modules share (:func:`int_value`, :func:`first_value`).
"""
from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .errors import UndecodableImage, UnsupportedImage

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
                         "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")

#: Image storage SOP classes we may meet as radiographs (CR, DX, SC, CT): no Pixel Data = truncated.
IMAGE_STORAGE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4", "1.2.840.10008.5.1.4.1.1.2",
})


def int_value(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """``ds.keyword`` as an int, or ``default`` when absent, empty or not an integer."""
    value = ds.get(keyword, default)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def first_value(value):
    """First value of a possibly multi-valued element (WindowCenter "2048\\1024" -> 2048)."""
    if value is None:
        return None
    try:
        return value[0] if not isinstance(value, (str, bytes)) and len(value) > 0 else value
    except TypeError:
        return value


#: What a malformed header value raises inside the display stages (numpy's UFuncTypeError and
#: DTypePromotionError are TypeErrors, AxisError a ValueError and IndexError; struct.error comes from
#: pydicom unpacking a short LUTData).
HEADER_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, ArithmeticError, struct.error)

#: Attributes the display stages read as numbers, in the order they are used.
_NUMERIC_ATTRIBUTES = ("NumberOfFrames", "PixelPaddingValue", "PixelPaddingRangeLimit", "RescaleSlope",
                       "RescaleIntercept", "WindowCenter", "WindowWidth")
_LUT_SEQUENCES = ("ModalityLUTSequence", "VOILUTSequence")
_PALETTE = ("RedPaletteColorLookupTable", "GreenPaletteColorLookupTable", "BluePaletteColorLookupTable")


def _shown(value) -> str:
    """``value`` quoted when short enough for a message, else empty (never dumps a LUT into a log)."""
    text = "\\".join(str(v) for v in value) if _is_multi(value) else str(value)
    return f" {text!r}" if len(text) <= 40 else ""


def _is_multi(value) -> bool:
    return isinstance(value, (list, tuple, MultiValue))


def _lut_problem(item: Dataset, keyword: str) -> str | None:
    """What is wrong with a LUT item (``LUTDescriptor`` + ``LUTData``, or a palette pair), or None."""
    descriptor_kw, data_kw = (f"{keyword}Descriptor", f"{keyword}Data") if keyword in _PALETTE else \
        ("LUTDescriptor", "LUTData")
    descriptor = item.get(descriptor_kw)
    try:
        entries, _, bits = (int(v) for v in descriptor)
    except (TypeError, ValueError):
        return f"{descriptor_kw}{_shown(descriptor) if descriptor is not None else ' (missing)'}"
    entries = entries or 65536
    data = item.get(data_kw)
    if data is None:
        return f"{data_kw} (missing)"
    if isinstance(data, (bytes, bytearray)):
        needed = entries * (1 if bits <= 8 else 2)       # pydicom unpacks 'B' or 'H' per entry
        if len(data) < needed:
            return f"{data_kw} ({len(data)} bytes for {entries} entries of {bits} bits)"
    elif _is_multi(data) and len(data) < entries:
        return f"{data_kw} ({len(data)} values for {entries} entries)"
    return None


def malformed_attribute(ds: Dataset) -> str | None:
    """The first pixel-related attribute of ``ds`` whose value the display stages cannot use, e.g.
    ``"WindowCenter 'abc.def'"`` or ``"ModalityLUTSequence LUTData (20 bytes for 4096 entries of 16 bits)"``;
    None when each looks usable (the error then came from a combination of them).
    """
    for keyword in _NUMERIC_ATTRIBUTES:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, (bytes, bytearray)):
            continue                                   # US/SS read as raw bytes: _padding_mask skips those
        for v in (value if _is_multi(value) else [value]):
            try:
                float(v)
            except (TypeError, ValueError):
                return f"{keyword}{_shown(value)}"
    for keyword in _LUT_SEQUENCES:
        seq = ds.get(keyword)
        if seq:
            problem = _lut_problem(seq[0], keyword)
            if problem:
                return f"{keyword} {problem}"
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "PALETTE COLOR":
        for keyword in _PALETTE:
            problem = _lut_problem(ds, keyword)
            if problem:
                return problem
    return None


def bad_header_error(ds: Dataset, what: str, exc: BaseException) -> UndecodableImage:
    """The :class:`UndecodableImage` (``bad_image_header``) for a header value the display stages choke on."""
    try:
        culprit = malformed_attribute(ds)
    except Exception:   # the probe reads the same broken header: never let it hide the real error
        culprit = None
    detail = " ".join(str(exc).strip().splitlines())[:200]
    named = f"malformed {culprit}" if culprit else "a malformed pixel-related attribute"
    return UndecodableImage(
        f"{what} cannot be displayed: {named} ({type(exc).__name__}: {detail}); "
        "check the modality's export settings and re-send the image", code="bad_image_header")



def check_pixel_header(ds: Dataset, what: str, max_pixels: int) -> None:
    """Refuse ``ds`` before decoding when its pixel header says it cannot or must not be decoded.

    Raises
    ------
    UnsupportedImage
        No Pixel Data (not an image), over ``max_pixels``, unsupported photometric interpretation or
        samples per pixel.
    UndecodableImage
        An image SOP class without Pixel Data (``truncated``), invalid Rows/Columns or a malformed
        NumberOfFrames (``bad_image_header``).
    """
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if str(ds.get("SOPClassUID", "")) in IMAGE_STORAGE_CLASSES:
            raise UndecodableImage(f"{what} has no Pixel Data although its SOP class {ds.SOPClassUID} is an image; "
                                   "the file is probably truncated: re-export it from the PACS", code="truncated")
        raise UnsupportedImage(f"{what} has no Pixel Data (SOP class {ds.get('SOPClassUID', 'unknown')}, "
                               f"modality {ds.get('Modality', 'unknown')}); it is not an image",
                               code="no_pixel_data")
    rows, cols = int_value(ds, "Rows"), int_value(ds, "Columns")
    if not rows or not cols or rows < 0 or cols < 0:
        raise UndecodableImage(f"{what} has Pixel Data but no valid Rows/Columns ({rows}x{cols}); "
                               "the header is corrupt", code="bad_image_header")
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int_value(ds, "NumberOfFrames") is None:   # 0 is tolerated: read as 1
        raise UndecodableImage(f"{what} cannot be displayed: malformed NumberOfFrames{_shown(frames)} (not an "
                               "integer); check the modality's export settings and re-send the image",
                               code="bad_image_header")
    if rows * cols > max_pixels:
        raise UnsupportedImage(
            f"{what} is {cols}x{rows} = {rows * cols / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.1f}; if this is a genuine radiograph raise the pixel limit", code="image_too_large")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnsupportedImage(f"{what} has Photometric Interpretation {photometric or '(none)'!r}; "
                               f"supported: {', '.join(SUPPORTED_PHOTOMETRIC)}", code="unsupported_photometric")
    samples = int_value(ds, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise UnsupportedImage(f"{what} has {samples} samples per pixel; only 1 (grayscale) or 3 (colour) "
                               "are supported", code="unsupported_samples")
