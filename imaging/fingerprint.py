"""A stable fingerprint of an instance version: what decoding and display read, hashed.

A failed decode is recorded against (SOP Instance UID, fingerprint): the same UID with the same
fingerprint will fail the same way, so the caller answers from the record; a re-sent instance with
other pixel data or another pixel-related header gets another fingerprint and is decoded again.
"""
from __future__ import annotations

import hashlib

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .decode import transfer_syntax

#: Groups the fingerprint covers besides the transfer syntax and SOP Class UID: 0028 (image pixel
#: module, Modality/VOI LUTs, windows, padding), 2050 (Presentation LUT Shape), 7FE0 (pixel data).
FINGERPRINT_GROUPS = (0x0028, 0x2050, 0x7FE0)


def _feed(h: "hashlib._Hash", value: object) -> None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        h.update(b"B%d:" % len(value))
        h.update(value)
    elif isinstance(value, Sequence):
        h.update(b"S%d:" % len(value))
        for item in value:
            _feed_dataset(h, item, None)
    else:
        text = str(value).encode("utf-8", "surrogateescape")
        h.update(b"T%d:" % len(text))
        h.update(text)


def _feed_dataset(h: "hashlib._Hash", ds: Dataset, groups: tuple[int, ...] | None) -> None:
    for tag in sorted(ds.keys()):
        if groups is not None and tag.group not in groups:
            continue
        h.update(b"%08X" % int(tag))
        try:
            value = ds[tag].value            # converted: the same whether or not it was read before
        except Exception:                    # noqa: BLE001 - a value pydicom cannot convert: its raw bytes
            value = getattr(ds.get_item(tag), "value", b"")
        _feed(h, value)


def instance_fingerprint(ds: Dataset) -> str:
    """``"sha256:<hex>"`` over the transfer syntax, SOP Class UID and groups 0028, 2050 and 7FE0 of ``ds``.

    Parameters
    ----------
    ds
        The retrieved instance (a full dataset, with its ``file_meta``).

    Returns
    -------
    str
        The same for the same stored instance, whichever process computes it; different when its pixel
        data or a pixel-related header value changes. Not an identifier of the patient (a hash of
        pixels and pixel-module values only).
    """
    h = hashlib.sha256()
    _feed(h, transfer_syntax(ds))
    _feed(h, str(ds.get("SOPClassUID", "") or ""))
    _feed_dataset(h, ds, FINGERPRINT_GROUPS)
    return f"sha256:{h.hexdigest()}"
