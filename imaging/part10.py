"""Part 10 bytes -> a pydicom Dataset, under a byte cap that also bounds a Deflated data set inflated.

Used by both sources (:mod:`imaging.dicomweb` measures the wire, :mod:`imaging.folder` the file) and
by :func:`imaging.read_radiograph`.
"""
from __future__ import annotations

import io
import zlib

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .errors import UndecodableImage
from .source import MAX_BYTES, byte_size, image_too_large


def deflated_dataset_start(data: bytes | bytearray) -> int | None:
    """Offset of the deflated data set in Part 10 bytes whose transfer syntax is Deflated Explicit VR
    Little Endian (1.2.840.10008.1.2.1.99), else None. ``data`` may be a whole multipart WADO-RS body:
    the part's ``DICM`` prefix is looked for in its first 64 KiB."""
    prefix = 128 if bytes(data[128:132]) == b"DICM" else bytes(data[:1 << 16]).find(b"DICM")
    if prefix < 0 or DeflatedExplicitVRLittleEndian.encode() not in bytes(data[prefix:prefix + 1024]):
        return None
    fp = io.BytesIO(bytes(data[prefix + 4:prefix + 4 + (1 << 16)]))   # the meta group, not the whole body
    try:          # the File Meta Information group is always Explicit VR Little Endian (PS3.10 7.1)
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag >> 16 != 2)
        deflated = str(meta.get("TransferSyntaxUID", "")).rstrip("\x00") == DeflatedExplicitVRLittleEndian
    except Exception:             # a broken meta group: the full parse reports it with the usual message
        return None
    return prefix + 4 + fp.tell() if deflated else None


def check_inflated_size(data: bytes | bytearray, *, max_bytes: int, what: str) -> None:
    """Refuse a Deflated dataset in ``data`` that inflates to more than ``max_bytes``.

    pydicom inflates a deflated data set in one ``zlib.decompress`` call, with no bound: a few MB of
    zeros can inflate to GBs. This counts the inflated size in bounded steps (at most 4 MiB held) first.

    Raises
    ------
    UnsupportedImage
        ``image_too_large``: the inflated data set is over ``max_bytes``.
    """
    start = deflated_dataset_start(data)
    if start is None:
        return
    view = memoryview(data)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)     # raw deflate, as PS3.5 A.5 writes it
    total = 0
    try:
        for pos in range(start, len(view), 1 << 20):   # feed 1 MiB, take at most 4 MiB at a time
            pending: bytes | memoryview = view[pos:pos + (1 << 20)]
            while pending and not inflater.eof:
                total += len(inflater.decompress(pending, 1 << 22))
                if total > max_bytes:
                    raise image_too_large(what, f"a deflated data set that inflates to at least "
                                                f"{byte_size(total)}", max_bytes)
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        total += len(inflater.flush())
    except zlib.error:
        return        # corrupt deflate data: pydicom's parse reports it ("not readable DICOM")
    if total > max_bytes:
        raise image_too_large(what, f"a deflated data set that inflates to {byte_size(total)}", max_bytes)


def parse_dicom(data: bytes, *, what: str, max_bytes: int = MAX_BYTES) -> Dataset:
    """Parse Part 10 bytes (preamble optional) or raise :class:`UndecodableImage` naming ``what``.

    Raises
    ------
    UnsupportedImage
        ``image_too_large``: ``data``, or its Deflated data set once inflated, is over ``max_bytes``.
    UndecodableImage
        Not DICOM, truncated or corrupt.
    """
    if len(data) > max_bytes:
        raise image_too_large(what, byte_size(len(data)), max_bytes)
    check_inflated_size(data, max_bytes=max_bytes, what=what)
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, OverflowError, zlib.error) as exc:
        raise UndecodableImage(f"{what} is not readable DICOM ({type(exc).__name__}: {exc}); "
                               "the file may be truncated or corrupt: re-export it from the PACS",
                               code="corrupt_dicom") from exc
