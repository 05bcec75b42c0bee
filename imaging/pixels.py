"""DICOM pixel data -> the 8-bit grayscale image a radiologist would see (MONOCHROME2).

Order (PS3.4 N.2 grayscale pipeline): decode the first frame -> Modality LUT (rescale or LUT) ->
VOI LUT (VOI LUT Sequence, else the first window with ``VOILUTFunction``, else a robust percentile
window) -> Presentation LUT (``INVERSE`` / MONOCHROME1 inversion) -> padding to black -> uint8.
Opt-in (``min_short_edge``): JPEG 2000 / HTJ2K grayscale decoded at a coarser level of its wavelet
pyramid (Pillow's OpenJPEG, ``reduce``), several times faster; see :func:`render_reduced`.
Pure: takes a Dataset, returns an array; the caller decides where the Dataset came from.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
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


def render(ds: Dataset, *, max_pixels: int = MAX_PIXELS, what: str | None = None,
           min_short_edge: int | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Like :func:`to_display_8bit`, also returning notes on what was done (frame, window, inversion).

    Parameters
    ----------
    ds
        A full DICOM dataset with pixel data (any transfer syntax pydicom can decode).
    max_pixels
        Refuse frames with more than this many pixels (Rows x Columns) before decoding.
    what
        How to name the image in messages (defaults to ``instance <SOPInstanceUID>``).
    min_short_edge
        Opt-in, JPEG 2000 / HTJ2K grayscale only: decode at the smallest resolution level whose short
        edge is still >= this many pixels (see :func:`render_reduced`). None or 0: full resolution.

    Returns
    -------
    pixels : np.ndarray
        (H, W) uint8, MONOCHROME2 (H, W smaller than Rows, Columns after a reduced decode).
    notes : tuple of str
        Human-readable notes, e.g. ``"VOI: window 1843/2457 (LINEAR), first of 2"``.

    Raises
    ------
    UnsupportedImage
        No pixel data, unsupported photometric interpretation or sample layout, over ``max_pixels``.
    UndecodableImage
        No decoder for the transfer syntax (the message names the package), corrupt/truncated data, or
        a malformed pixel-related header value (code ``bad_image_header``; the message names it).
    ValueError
        ``min_short_edge`` is negative.
    """
    pixels, notes, _ = render_reduced(ds, max_pixels=max_pixels, what=what, min_short_edge=min_short_edge)
    return pixels, notes


def render_reduced(ds: Dataset, *, max_pixels: int = MAX_PIXELS, what: str | None = None,
                   min_short_edge: int | None = None) -> tuple[np.ndarray, tuple[str, ...], int]:
    """:func:`render`, also returning the resolution reduction ``n`` (pixels are 1/2**n of the stored grid).

    JPEG 2000 is a wavelet pyramid: dropping the ``n`` finest levels gives the image at 1/2**n
    resolution for a fraction of the decode time (most of the cost of a lossless radiograph is
    entropy-decoding the finest subbands). With ``min_short_edge`` set and a JPEG 2000 / HTJ2K
    grayscale image, the largest ``n`` (up to the codestream's decomposition levels) whose short edge
    stays >= ``min_short_edge`` is used. The values are the wavelet low-pass band, in the same units as
    the stored values, so the Modality LUT, VOI LUT, inversion and padding stages are the same
    functions applied to fewer pixels (a percentile window sees a slightly smoother distribution, and
    padding borders are blended with their neighbours). Every other transfer syntax, colour, palette
    and > 16-bit image is decoded at full resolution as before (``n`` = 0).

    Why a margin: the model's preprocessing resizes the short edge to its input size (512 px for
    CXR-LLAVA) with LANCZOS; callers pass 2 x that (1024) so the resize still low-pass filters from a
    finer grid instead of relying on the codec's 5/3 or 9/7 low-pass alone.

    Returns
    -------
    pixels : np.ndarray
        (h, w) uint8, MONOCHROME2, h = ceil(Rows / 2**n), w = ceil(Columns / 2**n).
    notes : tuple of str
        As for :func:`render`; a reduced decode adds e.g. ``"decoded at 1/2 resolution (J2K reduce=1):
        1250x1500 of 2500x3000, short edge >= 1024 px"``.
    n : int
        The reduction; pixel spacing grows by 2**n.

    Raises
    ------
    UnsupportedImage, UndecodableImage, ValueError
        As for :func:`render`.
    """
    if min_short_edge is not None and min_short_edge < 0:
        raise ValueError(f"min_short_edge must be >= 0 (0 or None = full resolution), not {min_short_edge}")
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
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and _int(ds, "NumberOfFrames") is None:   # 0 is tolerated: read as 1
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
    samples = _int(ds, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise UnsupportedImage(f"{what} has {samples} samples per pixel; only 1 (grayscale) or 3 (colour) "
                               "are supported", code="unsupported_samples")

    try:
        reduced = decode_first_frame_reduced(ds, what, min_short_edge) if min_short_edge else None
        if reduced is not None:
            arr, decoded_photometric, n, decode_notes = reduced
        else:
            (arr, decoded_photometric), n, decode_notes = decode_first_frame(ds, what), 0, ()
        pixels, notes = to_display(ds, arr, decoded_photometric)
    except HEADER_ERRORS as exc:
        # The one place malformed header values (WindowCenter "abc.def", a text RescaleSlope, a short
        # Modality LUT) are caught: every stage above reads them, none may leak a bare exception.
        raise bad_header_error(ds, what, exc) from exc
    return pixels, decode_notes + notes, n


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


# -- reduced-resolution JPEG 2000 decoding ----------------------------------------------------------
#: Transfer syntaxes whose codestream is a JPEG 2000 resolution pyramid (Part 1 and High-Throughput).
J2K_SYNTAXES = frozenset({uids.JPEG2000Lossless, uids.JPEG2000, uids.HTJ2KLossless, uids.HTJ2KLosslessRPCL,
                          uids.HTJ2K})


@dataclass(frozen=True)
class J2kHeader:
    """What the main header of a JPEG 2000 codestream says (SIZ, COD, COC; ISO/IEC 15444-1 A.5, A.6)."""

    rows: int
    columns: int
    components: int
    precision: int            # bits per sample of component 0
    signed: bool
    levels: int               # fewest decomposition levels of any component (main header)
    x0: int = 0               # image offset on the reference grid (XOsiz, YOsiz)
    y0: int = 0

    def size_at(self, n: int) -> tuple[int, int]:
        """(rows, columns) after discarding ``n`` resolution levels (ceil on the reference grid)."""
        def ceil(a: int) -> int:
            return -(-a // (1 << n))
        return (ceil(self.y0 + self.rows) - ceil(self.y0), ceil(self.x0 + self.columns) - ceil(self.x0))


def parse_j2k_header(codestream: bytes) -> J2kHeader:
    """Read SIZ and COD/COC from a raw J2K codestream (starts ``FF4F FF51``); ValueError if it is not one."""
    data = memoryview(codestream)
    if bytes(data[:4]) != b"\xff\x4f\xff\x51":
        raise ValueError("not a JPEG 2000 codestream (no SOC + SIZ marker)")
    pos, siz, levels = 2, None, []
    while pos + 4 <= len(data):
        marker, length = struct.unpack_from(">HH", data, pos)
        body = pos + 4                               # first byte after the marker and its length
        if marker in (0xFF90, 0xFF93, 0xFFD9):       # SOT / SOD / EOC: end of the main header
            break
        if marker == 0xFF51:                         # SIZ: Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, tiles, Csiz, comps
            xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, body + 2)
            csiz = struct.unpack_from(">H", data, body + 34)[0]
            ssiz = data[body + 36]
            siz = (ysiz - yo, xsiz - xo, csiz, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), xo, yo)
        elif marker == 0xFF52:                       # COD: Scod, SGcod (4 bytes), SPcod[0] = levels
            levels.append(data[body + 5])
        elif marker == 0xFF53 and siz is not None:   # COC: Ccoc (1 or 2 bytes), Scoc, SPcoc[0] = levels
            levels.append(data[body + (2 if siz[2] < 257 else 3) + 1])
        pos += 2 + length
    if siz is None or not levels:
        raise ValueError("JPEG 2000 main header has no SIZ or COD marker segment")
    rows, columns, components, precision, signed, x0, y0 = siz
    return J2kHeader(rows, columns, components, precision, signed, min(levels), x0, y0)


def j2k_reduction(header: J2kHeader, min_short_edge: int) -> int:
    """Largest ``n`` <= the decomposition levels whose reduced short edge is still >= ``min_short_edge``."""
    n = 0
    while n < header.levels and min(header.size_at(n + 1)) >= min_short_edge:
        n += 1
    return n


def _pillow_reduced_size(header: J2kHeader, n: int) -> tuple[int, int]:
    """(rows, columns) Pillow's JPEG 2000 plugin expects after ``reduce = n`` (its rounding, Pillow 10-13)."""
    power = 1 << n
    return int((header.rows + (power >> 1)) / power), int((header.columns + (power >> 1)) / power)


def decode_first_frame_reduced(ds: Dataset, what: str, min_short_edge: int
                               ) -> tuple[np.ndarray, str, int, tuple[str, ...]] | None:
    """First frame of a J2K/HTJ2K grayscale image at 1/2**n resolution, or None to decode in full.

    Returns ``(arr (h, w) stored values, photometric, n, notes)`` with ``arr`` in the dtype pydicom
    would give (e.g. uint16 / int16), or None when the option does not apply: not J2K, colour or
    palette, > 16 bits, header disagreeing with the dataset, no reduction possible, or a decoder
    failure (the full decode then reports corrupt data with the usual message).
    """
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    bits_allocated = _int(ds, "BitsAllocated")
    signed = _int(ds, "PixelRepresentation", 0) == 1
    if (ts not in J2K_SYNTAXES or photometric not in ("MONOCHROME1", "MONOCHROME2")
            or _int(ds, "SamplesPerPixel", 1) != 1 or bits_allocated not in (8, 16) or "PixelData" not in ds):
        return None
    frames = _int(ds, "NumberOfFrames", 1) or 1
    try:
        codestream = get_frame(ds.PixelData, 0, number_of_frames=frames)   # J2K codestream of frame 1
        header = parse_j2k_header(codestream)
    except (ValueError, KeyError, IndexError, TypeError, struct.error):
        return None
    if (header.components != 1 or header.precision > bits_allocated or header.signed != signed
            or header.precision != (_int(ds, "BitsStored") or header.precision)
            or (header.rows, header.columns) != (_int(ds, "Rows"), _int(ds, "Columns"))):
        return None                                  # pydicom's full decoder knows how to reconcile these
    n = j2k_reduction(header, min_short_edge)
    # Pillow sizes its output as round(size / 2**n) where OpenJPEG gives ceil(size / 2**n), and refuses
    # the decode ("broken data stream") when they differ: step down to a level where they agree (n = 1
    # always does; a 3000 x 2500 plate agrees up to n = 3).
    while n > 0 and _pillow_reduced_size(header, n) != header.size_at(n):
        n -= 1
    if n == 0:
        return None
    from PIL import Image, features                  # Pillow bundles OpenJPEG; pylibjpeg-openjpeg has no reduce

    if not features.check_codec("jpg_2000"):
        return None
    rows, cols = header.size_at(n)
    try:
        with warnings.catch_warnings():
            # max_pixels has been checked on Rows x Columns; Pillow's own bomb check is redundant here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(codestream)) as im:
                im.reduce = n
                im.load()
                raw = np.asarray(im)                 # (h, w) uint8 "L" or uint16 "I;16"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if raw.shape != (rows, cols) or raw.dtype not in (np.uint8, np.uint16):
        return None
    # Pillow scales samples to the full 8/16 bits of its mode and offsets signed ones by 2**(p-1):
    # undo both to get the stored values back (exact: the test at n = 0 compares with pydicom).
    shift = raw.dtype.itemsize * 8 - header.precision
    values = (raw.astype(np.int32) >> shift) - ((1 << (header.precision - 1)) if signed else 0)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    arr = values.astype(dtype)                       # (h, w) stored values, as pydicom would return them
    note = (f"decoded at 1/{1 << n} resolution (J2K reduce={n}): {cols}x{rows} of "
            f"{header.columns}x{header.rows}, short edge >= {min_short_edge} px")
    return arr, photometric, n, (note,)


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
        index = np.subtract(stored, lo, dtype=np.intp)     # (H, W) -> level; one pass, no int64 temporary
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
