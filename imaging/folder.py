"""A local folder of DICOM files as an :class:`~imaging.source.ImageSource` (the embedded default)."""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from .errors import ImagingUnavailable, StudyNotFound, UnsupportedImage
from .part10 import check_inflated_size, deflated_dataset_start, parse_dicom
from .source import (MAX_BYTES, SERIES_FIELDS, STUDY_FIELDS, RetrievedInstance, byte_size, copy_element,
                     image_too_large, uid_of)

log = logging.getLogger(__name__)


class FolderSource:
    """A local folder of DICOM files (searched recursively), the embedded default.

    dicomweb-client's ``DICOMfileClient`` was considered: its index keeps only a fixed attribute set
    (no ViewPosition, BodyPartExamined, ImageType, SeriesDescription), it writes a database file into
    the folder, and its retrieve fails on Implicit VR and Deflated files. So this is a small header index
    (re-read only for files whose size or mtime changed) behind the same protocol.
    """

    def __init__(self, path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0 (bytes per DICOM file), not {max_bytes}")
        self.path = Path(path)
        self.name = f"folder {self.path}"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._headers: dict[Path, tuple[tuple[int, int], Dataset | None]] = {}

    # -- index ------------------------------------------------------------------------------------
    def _scan(self) -> list[tuple[Path, Dataset]]:
        if not self.path.is_dir():
            raise ImagingUnavailable(f"image folder {self.path} does not exist or is not a directory; "
                                     "create it or point the service at another folder", code="folder_missing")
        with self._lock:
            seen: dict[Path, tuple[tuple[int, int], Dataset | None]] = {}
            for file in sorted(self.path.rglob("*")):
                if file.name.startswith(".") or not file.is_file():
                    continue
                st = file.stat()
                stamp = (st.st_size, st.st_mtime_ns)
                cached = self._headers.get(file)
                if cached is not None and cached[0] == stamp:
                    seen[file] = cached
                    continue
                seen[file] = (stamp, self._read_header(file, self.max_bytes))
            self._headers = seen
            return [(file, header) for file, (_, header) in seen.items() if header is not None]

    @staticmethod
    def _read_header(file: Path, max_bytes: int = MAX_BYTES) -> Dataset | None:
        try:
            with file.open("rb") as fp:
                head = fp.read(1 << 16)
            if deflated_dataset_start(head) is not None:
                # pydicom inflates the whole data set even to read its header: bound it first.
                check_inflated_size(file.read_bytes(), max_bytes=max_bytes, what=file.name)
            # force=True: files written without preamble (pydicom 3 / STOW quirk) are still DICOM.
            ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)
        except UnsupportedImage as exc:
            log.warning("skipping a file in image folder %s: %s", file.parent, exc.code)
            return None
        except Exception:   # not DICOM, or a header too broken to index: skip like a PACS would refuse it
            log.debug("skipping unreadable file in image folder: %s", file.name)
            return None
        # Index only what a PACS would: one non-empty Study, Series and SOP Instance UID each.
        if not all(uid_of(ds, keyword) for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
            log.debug("skipping file without usable UIDs in image folder: %s", file.name)
            return None
        return ds

    # -- QIDO-like --------------------------------------------------------------------------------
    def search_for_studies(self, search_filters: Mapping[str, str]) -> list[Dataset]:
        studies: dict[str, Dataset] = {}
        modalities: dict[str, set[str]] = {}
        for _, header in self._scan():
            uid = str(header.StudyInstanceUID)
            modalities.setdefault(uid, set()).add(str(header.get("Modality", "") or ""))
            if uid not in studies:
                study = Dataset()
                for keyword in STUDY_FIELDS:
                    copy_element(header, study, keyword)
                studies[uid] = study
        out = []
        for uid, study in studies.items():
            study.ModalitiesInStudy = sorted(m for m in modalities[uid] if m)
            if all(_folder_match(study, key, value) for key, value in search_filters.items()):
                out.append(study)
        return out

    def search_for_series(self, study_instance_uid: str) -> list[Dataset]:
        series: dict[str, Dataset] = {}
        for _, header in self._scan():
            if header.StudyInstanceUID != study_instance_uid or header.SeriesInstanceUID in series:
                continue
            item = Dataset()
            item.StudyInstanceUID = study_instance_uid
            for keyword in SERIES_FIELDS:
                copy_element(header, item, keyword)
            series[str(header.SeriesInstanceUID)] = item
        return list(series.values())

    def search_for_instances(self, study_instance_uid: str, series_instance_uid: str,
                             fields: Sequence[str] = ()) -> list[Dataset]:
        return [header for _, header in self._scan()
                if header.StudyInstanceUID == study_instance_uid
                and header.SeriesInstanceUID == series_instance_uid]

    def _find(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
              ) -> tuple[Path, Dataset]:
        for file, header in self._scan():
            if (header.SOPInstanceUID == sop_instance_uid and header.StudyInstanceUID == study_instance_uid
                    and header.SeriesInstanceUID == series_instance_uid):
                return file, header
        raise StudyNotFound(f"instance {sop_instance_uid} is not in {self.name}", code="not_found_on_pacs")

    def retrieve_instance_metadata(self, study_instance_uid: str, series_instance_uid: str,
                                   sop_instance_uid: str) -> Dataset:
        return self._find(study_instance_uid, series_instance_uid, sop_instance_uid)[1]

    def retrieve_instance(self, study_instance_uid: str, series_instance_uid: str,
                          sop_instance_uid: str) -> RetrievedInstance:
        file, _ = self._find(study_instance_uid, series_instance_uid, sop_instance_uid)
        what = f"{file.name} in {self.name}"
        try:
            size = file.stat().st_size
            if size > self.max_bytes:
                raise image_too_large(what, byte_size(size), self.max_bytes)
            data = file.read_bytes()
        except OSError as exc:
            raise ImagingUnavailable(f"cannot read {file} in {self.name} ({exc.strerror}); "
                                     "check the file permissions", code="folder_unreadable") from exc
        return RetrievedInstance(parse_dicom(data, what=what, max_bytes=self.max_bytes), len(data))


def _folder_match(study: Dataset, key: str, wanted: str) -> bool:
    """QIDO matching for the few filters the locator sends: exact, comma lists, date ranges."""
    if key == "ModalitiesInStudy":
        found = study.get("ModalitiesInStudy") or []
        found = [found] if isinstance(found, str) else list(found)    # one value comes back as a str
        return bool({str(m) for m in found} & set(str(wanted).split(",")))
    value = str(study.get(key, "") or "")
    if key == "StudyDate" and "-" in str(wanted):
        lo, hi = str(wanted).split("-", 1)
        return bool(value) and (not lo or value >= lo) and (not hi or value <= hi)
    return value == str(wanted)
