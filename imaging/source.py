"""Where images come from: the small protocol a DICOMweb PACS and a local folder both implement.

The method names are the DICOMweb transactions (``search_for_studies``, ``search_for_series``,
``search_for_instances``, ``retrieve_instance_metadata``, ``retrieve_instance``); both sources return
pydicom Datasets, so locate/select code is the same for a PACS (:mod:`imaging.dicomweb`) and for a
folder (:mod:`imaging.folder`). Also the dataset helpers and byte limits both sources share.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .errors import UnsupportedImage

log = logging.getLogger(__name__)

# Attributes asked for at each QIDO level (includefield); the folder source returns a superset.
STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                "StudyDescription", "PatientID")
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber", "BodyPartExamined")

#: Default byte cap on one retrieved instance, and on a Deflated dataset once inflated: a large CR
#: plate is ~30 MB uncompressed, so 512 MB leaves room without letting a PACS answer (or a zip bomb)
#: fill the service's memory.
MAX_BYTES = 512_000_000


@dataclass(frozen=True)
class RetrievedInstance:
    """One instance as retrieved: the parsed dataset and the bytes that crossed the wire (or disk)."""

    dataset: Dataset
    bytes_transferred: int


@runtime_checkable
class ImageSource(Protocol):
    """What locate/select/fetch need from a PACS or a folder.

    ``name`` describes the source for messages (never credentials). Searches return Datasets with
    at least the attributes asked for; a source may return more, and may ignore filters (callers
    re-check what comes back).
    """

    name: str

    def search_for_studies(self, search_filters: Mapping[str, str]) -> list[Dataset]: ...

    def search_for_series(self, study_instance_uid: str) -> list[Dataset]: ...

    def search_for_instances(self, study_instance_uid: str, series_instance_uid: str,
                             fields: Sequence[str] = ()) -> list[Dataset]: ...

    def retrieve_instance_metadata(self, study_instance_uid: str, series_instance_uid: str,
                                   sop_instance_uid: str) -> Dataset: ...

    def retrieve_instance(self, study_instance_uid: str, series_instance_uid: str,
                          sop_instance_uid: str) -> RetrievedInstance: ...



def uid_of(ds: Dataset, keyword: str) -> str | None:
    """The single, non-empty UID in ``keyword`` of ``ds``, or None (absent, empty, multi-valued, bytes)."""
    try:
        value = ds.get(keyword)
    except Exception:            # a raw element pydicom cannot convert
        return None
    if value is None or isinstance(value, (bytes, bytearray, MultiValue, list, tuple)):
        return None
    text = str(value).strip().rstrip("\x00").strip()
    return text or None


def byte_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n} bytes"


def image_too_large(what: str, size: str, limit: int) -> UnsupportedImage:
    """The :class:`UnsupportedImage` (``image_too_large``) for an instance over the byte cap."""
    return UnsupportedImage(
        f"{what} is {size}, over the limit of {byte_size(limit)} per instance; if this is a genuine "
        "radiograph, raise max_bytes where the image source is made (e.g. DicomWebSource.from_url(url, "
        "max_bytes=...), FolderSource(path, max_bytes=...))", code="image_too_large")


def copy_element(source: Dataset, target: Dataset, keyword: str) -> None:
    """Copy ``keyword`` from ``source`` to ``target`` as an element: never re-validates its value.

    ``setattr(target, keyword, value)`` would convert the value again and raise on a malformed one
    (SeriesNumber "abcd") that tolerant reading let through.
    """
    if keyword in source:
        try:
            target.add(copy.copy(source.data_element(keyword)))
        except Exception:       # a raw element pydicom cannot convert: leave it out, like an absent one
            log.debug("dropping malformed %s", keyword)
