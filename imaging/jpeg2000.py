"""JPEG 2000 at reduced resolution: read the codestream's main header, pick a pyramid level, decode it.

A J2K codestream is a wavelet pyramid: dropping the ``n`` finest levels gives the image at 1/2**n
resolution for a fraction of the decode time. :func:`decode_first_frame_reduced` does that through
Pillow's OpenJPEG (``reduce``) for grayscale images, returning stored values as pydicom would.
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

from .header_checks import int_value

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
    bits_allocated = int_value(ds, "BitsAllocated")
    signed = int_value(ds, "PixelRepresentation", 0) == 1
    if (ts not in J2K_SYNTAXES or photometric not in ("MONOCHROME1", "MONOCHROME2")
            or int_value(ds, "SamplesPerPixel", 1) != 1 or bits_allocated not in (8, 16) or "PixelData" not in ds):
        return None
    frames = int_value(ds, "NumberOfFrames", 1) or 1
    try:
        codestream = get_frame(ds.PixelData, 0, number_of_frames=frames)   # J2K codestream of frame 1
        header = parse_j2k_header(codestream)
    except (ValueError, KeyError, IndexError, TypeError, struct.error):
        return None
    if (header.components != 1 or header.precision > bits_allocated or header.signed != signed
            or header.precision != (int_value(ds, "BitsStored") or header.precision)
            or (header.rows, header.columns) != (int_value(ds, "Rows"), int_value(ds, "Columns"))):
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


