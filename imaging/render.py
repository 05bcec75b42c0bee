"""DICOM pixel data -> the 8-bit grayscale image a radiologist would see (MONOCHROME2).

The display pipeline in three steps, one module each: :mod:`imaging.header_checks` refuses what must
not be decoded; :mod:`imaging.decode` (run in a child process with a time and memory limit by
:mod:`imaging.isolation` for every compressed transfer syntax) decodes the first frame, or a reduced
JPEG 2000 level (:mod:`imaging.jpeg2000`); :mod:`imaging.windowing` applies the LUTs and makes uint8.
Pure: takes a Dataset, returns an array; the caller decides where the Dataset came from.
"""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from .errors import UndecodableImage
from .fingerprint import instance_fingerprint
from .header_checks import HEADER_ERRORS, bad_header_error, check_pixel_header
from .isolation import DEFAULT_DECODE_LIMITS, DecodeLimits, decode_isolated
from .windowing import to_display

#: Default pixel-count limit per frame (Rows x Columns): decompression-bomb guard. A large CR plate
#: is ~4300 x 3500 = 15 MP; 40 MP leaves room without letting a 65535 x 65535 header allocate 8 GB.
MAX_PIXELS = 40_000_000


def render(ds: Dataset, *, max_pixels: int = MAX_PIXELS, what: str | None = None,
           min_short_edge: int | None = None,
           decode_limits: DecodeLimits = DEFAULT_DECODE_LIMITS) -> tuple[np.ndarray, tuple[str, ...]]:
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
    decode_limits
        Time and memory limits of the child process that decodes compressed pixel data.

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
        No decoder for the transfer syntax (the message names the package), corrupt/truncated data, a
        malformed pixel-related header value (code ``bad_image_header``; the message names it), or a
        decoder that crashed (``decoder_crashed``), ran out of time (``decode_timeout``) or memory
        (``decode_memory_limit``). Carries ``sop_instance_uid`` and ``fingerprint``.
    ValueError
        ``min_short_edge`` is negative.
    """
    pixels, notes, _ = render_reduced(ds, max_pixels=max_pixels, what=what, min_short_edge=min_short_edge,
                                      decode_limits=decode_limits)
    return pixels, notes


def render_reduced(ds: Dataset, *, max_pixels: int = MAX_PIXELS, what: str | None = None,
                   min_short_edge: int | None = None, decode_limits: DecodeLimits = DEFAULT_DECODE_LIMITS
                   ) -> tuple[np.ndarray, tuple[str, ...], int]:
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
    try:
        check_pixel_header(ds, what, max_pixels)
        try:
            arr, decoded_photometric, n, decode_notes = decode_isolated(ds, what, min_short_edge or None,
                                                                        decode_limits)
            pixels, notes = to_display(ds, arr, decoded_photometric)
        except HEADER_ERRORS as exc:
            # The one place malformed header values (WindowCenter "abc.def", a text RescaleSlope, a short
            # Modality LUT) are caught: every stage above reads them, none may leak a bare exception.
            raise bad_header_error(ds, what, exc) from exc
    except UndecodableImage as exc:
        identify(exc, ds)
        raise
    return pixels, decode_notes + notes, n


def identify(exc: UndecodableImage, ds: Dataset) -> UndecodableImage:
    """Set ``exc.sop_instance_uid`` and ``exc.fingerprint`` from ``ds`` where not set yet; returns ``exc``."""
    if exc.sop_instance_uid is None:
        uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        exc.sop_instance_uid = uid or None
    if exc.fingerprint is None:
        exc.fingerprint = instance_fingerprint(ds)
    return exc


def to_display_8bit(ds: Dataset, *, max_pixels: int = MAX_PIXELS,
                    decode_limits: DecodeLimits = DEFAULT_DECODE_LIMITS) -> np.ndarray:
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
    decode_limits
        Time and memory limits of the child process that decodes compressed pixel data.

    Returns
    -------
    np.ndarray
        (H, W) uint8.

    Raises
    ------
    UnsupportedImage, UndecodableImage
        See :func:`render`.
    """
    return render(ds, max_pixels=max_pixels, decode_limits=decode_limits)[0]
