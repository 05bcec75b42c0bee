"""Where images come from: a DICOMweb PACS or a local folder, behind one small protocol.

This is the imaging package's only I/O module. The method names are the DICOMweb transactions
(``search_for_studies``, ``search_for_series``, ``search_for_instances``, ``retrieve_instance_metadata``,
``retrieve_instance``); both sources return pydicom Datasets, so locate/select code is the same for a
PACS and for a folder. Transport failures become :class:`ImagingUnavailable` here, nowhere else.
"""
from __future__ import annotations

import copy
import io
import logging
import os
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

from .errors import ImagingError, ImagingUnavailable, StudyNotFound, UndecodableImage, UnsupportedImage

log = logging.getLogger(__name__)

T = TypeVar("T")

# Attributes asked for at each QIDO level (includefield); the folder source returns a superset.
STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                "StudyDescription", "PatientID")
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber", "BodyPartExamined")

# Ask for the stored encoding: never make the PACS transcode (Orthanc crashes on some transcodings,
# ../shared/reference/IMAGING_FHIR.md §1.4); pydicom decodes every syntax client-side.
AS_STORED = (("application/dicom", "*"),)

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


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _is_timeout(exc: BaseException) -> bool:
    # After urllib3's retries a read timeout arrives as ConnectionError(MaxRetryError(ReadTimeoutError)).
    if isinstance(exc, requests.exceptions.Timeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # NewConnectionError (refused) subclasses ConnectTimeoutError in urllib3 2: rule it out first.
    return isinstance(reason, (ReadTimeoutError, ConnectTimeoutError)) and not isinstance(reason, NewConnectionError)


def _from_json(item: Any) -> Dataset:
    """DICOM JSON -> Dataset, dropping bulk data (metadata never needs pixels).

    Tolerant reading: an element pydicom cannot convert (``"Rows": {"vr": "US", "Value": ["abc"]}``,
    a non-list ``Value``, a malformed sequence) is dropped, not raised; an item that is not a JSON
    object gives an empty Dataset, which every caller rejects for its missing UIDs.
    """
    if not isinstance(item, Mapping):
        return Dataset()
    kept = {tag: value for tag, value in item.items()
            if isinstance(value, Mapping) and not ("BulkDataURI" in value or "InlineBinary" in value)}
    try:
        return Dataset.from_json(kept)
    except Exception:           # pydicom raises ValueError, TypeError, KeyError, AttributeError ... here
        pass
    ds = Dataset()
    for tag, value in kept.items():
        try:
            ds.update(Dataset.from_json({tag: value}))
        except Exception:
            log.debug("dropping malformed DICOM JSON element %s (vr %s)", tag, value.get("vr"))
    return ds


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


def _deflated_dataset_start(data: bytes | bytearray) -> int | None:
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
    start = _deflated_dataset_start(data)
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


def build_session(*, username: str | None = None, password: str | None = None,
                  bearer_token: str | None = None, retries: int = 2,
                  backoff_s: float = 0.2) -> requests.Session:
    """A requests Session with auth and retries: backoff on connection errors and 5xx, never on 4xx.

    Parameters
    ----------
    username, password
        HTTP basic authentication (both or neither).
    bearer_token
        ``Authorization: Bearer ...`` instead of basic authentication.
    retries
        Extra attempts after the first one for GET requests (0 disables retrying).
    backoff_s
        Backoff factor in seconds (urllib3: ``backoff_s * 2 ** (attempt - 1)``, first retry at once).

    Raises
    ------
    ValueError
        Both basic and bearer credentials, or a username without a password.
    """
    if bearer_token and (username or password):
        raise ValueError("give either username/password or bearer_token for the PACS, not both")
    if (username is None) != (password is None):
        raise ValueError("PACS basic authentication needs both a username and a password")
    session = requests.Session()
    if username is not None:
        session.auth = (username, password)
    if bearer_token:
        session.headers["Authorization"] = f"Bearer {bearer_token}"
    retry = Retry(
        total=retries, connect=retries, read=retries, status=retries, other=0,
        backoff_factor=backoff_s, backoff_max=5.0,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,          # hand the last 5xx to dicomweb-client, which raises HTTPError
        respect_retry_after_header=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class DicomWebSource:
    """A PACS over DICOMweb (QIDO-RS, WADO-RS) through ``dicomweb_client.DICOMwebClient``.

    The constructor takes a ready client (tests pass one pointed at a real Orthanc on loopback);
    :meth:`from_url` builds one with authentication, timeouts and retries. ``max_bytes`` caps what one
    :meth:`retrieve_instance` may bring back (Content-Length, else the bytes received) and the inflated
    size of a Deflated data set; it is enforced when the client runs on a ``requests.Session``.
    """

    def __init__(self, client: Any, *, name: str | None = None, max_bytes: int = MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0 (bytes per retrieved instance), not {max_bytes}")
        self.client = client
        self.name = name or f"DICOMweb {_without_credentials(getattr(client, 'base_url', '?'))}"
        self.max_bytes = max_bytes
        self._meter = threading.local()
        # dicomweb-client offers no public accessor for the session it was given; a response hook on
        # it is the only way to see the bytes on the wire for the retrieve we measure.
        session = getattr(client, "_session", None)
        # dicomweb-client's `retrying` decorator logs every failed attempt at WARNING with the exception,
        # whose text holds the request URL (and so a PatientID from a QIDO query): keep it out of logs.
        logging.getLogger("retrying").setLevel(logging.ERROR)
        if isinstance(session, requests.Session):
            session.hooks.setdefault("response", []).append(self._count_bytes)

    def _count_bytes(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Response hook of :meth:`retrieve_instance`: measure the body, and refuse it over ``max_bytes``.

        requests runs response hooks before it reads a non-streamed body, so the body is read here in
        1 MiB steps and the read stops at the cap, whatever Content-Length says (or when it is absent).
        """
        if not getattr(self._meter, "active", False):
            return
        what = self._meter.what
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response.close()
            raise image_too_large(what, f"{byte_size(int(declared))} (Content-Length)", self.max_bytes)
        body = bytearray()
        for chunk in response.iter_content(1 << 20):
            body += chunk
            if len(body) > self.max_bytes:
                response.close()
                raise image_too_large(what, f"more than {byte_size(self.max_bytes)} (no Content-Length; "
                                            "reading stopped there)", self.max_bytes)
        # requests keeps a read body in `_content` (what `.content` returns): dicomweb-client's multipart
        # parse then reads these bytes, not the (already consumed) socket.
        response._content = bytes(body)
        response._content_consumed = True
        self._meter.count += len(body)
        if response.status_code == 200:
            check_inflated_size(body, max_bytes=self.max_bytes, what=what)

    @classmethod
    def from_url(cls, url: str, *, username: str | None = None, password: str | None = None,
                 bearer_token: str | None = None, timeout_s: float = 10, retries: int = 2,
                 backoff_s: float = 0.2, max_bytes: int = MAX_BYTES) -> "DicomWebSource":
        """Build a source for the DICOMweb root ``url`` (e.g. ``http://pacs:8042/dicom-web``).

        Parameters
        ----------
        url
            DICOMweb service root; credentials must not be embedded in it.
        username, password, bearer_token
            PACS authentication (see :func:`build_session`).
        timeout_s
            Connect and read timeout per request, in seconds.
        retries, backoff_s
            Retry policy for connection errors and 5xx answers (never 4xx).
        max_bytes
            Byte cap on one retrieved instance and on a Deflated data set's inflated size.

        Raises
        ------
        ValueError
            A malformed URL, contradictory credentials or ``max_bytes`` <= 0.
        """
        from dicomweb_client.api import DICOMwebClient

        if urlsplit(url).username or urlsplit(url).password:
            raise ValueError("put PACS credentials in username/password, not in the DICOMweb URL")
        session = build_session(username=username, password=password, bearer_token=bearer_token,
                                retries=retries, backoff_s=backoff_s)
        client = DICOMwebClient(url=url.rstrip("/"), session=session, timeout=timeout_s)
        # dicomweb-client's own retry loop waits 1, 2, 4 ... s on 503/504 on top of ours: one policy only.
        client.set_http_retry_params(retry=False)
        return cls(client, max_bytes=max_bytes)

    # -- transport errors -> the imaging error family ----------------------------------------------
    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # Transport errors are re-raised `from None`: requests' messages carry the full URL, whose QIDO
        # query may hold a PatientID, and a logged traceback would print it.
        try:
            return fn(*args, **kwargs)
        except ImagingError:
            raise
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
            if not _is_timeout(exc):
                raise ImagingUnavailable(
                    f"{self.name} is unreachable while {what} (connection refused or reset); "
                    "check that the PACS is running and the DICOMweb URL is right",
                    code="pacs_unreachable") from None
            raise ImagingUnavailable(
                f"{self.name} did not answer in time while {what} ({type(exc).__name__}); "
                "check the PACS load or raise the DICOMweb timeout", code="pacs_timeout") from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            reason = exc.response.reason if exc.response is not None else ""
            if status in (401, 403):
                raise ImagingUnavailable(
                    f"{self.name} answered {status} {reason} while {what}; "
                    "check the DICOMweb credentials (username/password or bearer token)",
                    code="pacs_unauthorized") from None
            if status == 404:
                raise StudyNotFound(f"{self.name} answered 404 Not Found while {what}; "
                                    "the object may have been deleted or moved", code="not_found_on_pacs") from None
            if status >= 500:
                raise ImagingUnavailable(
                    f"{self.name} answered {status} {reason} while {what} (after retries); "
                    "see the PACS log", code="pacs_error") from None
            raise ImagingUnavailable(
                f"{self.name} refused the request ({status} {reason}) while {what}; "
                "not retried: check the DICOMweb URL and the PACS's QIDO/WADO support",
                code="pacs_rejected") from None

    # -- QIDO-RS ----------------------------------------------------------------------------------
    def search_for_studies(self, search_filters: Mapping[str, str]) -> list[Dataset]:
        found = self._call("searching for studies", self.client.search_for_studies,
                           search_filters=dict(search_filters), fields=list(STUDY_FIELDS))
        return [_from_json(item) for item in found]

    def search_for_series(self, study_instance_uid: str) -> list[Dataset]:
        found = self._call(f"searching the series of study {study_instance_uid}",
                           self.client.search_for_series, study_instance_uid=study_instance_uid,
                           fields=list(SERIES_FIELDS))
        return [_from_json(item) for item in found]

    def search_for_instances(self, study_instance_uid: str, series_instance_uid: str,
                             fields: Sequence[str] = ()) -> list[Dataset]:
        found = self._call(f"searching the instances of series {series_instance_uid}",
                           self.client.search_for_instances, study_instance_uid=study_instance_uid,
                           series_instance_uid=series_instance_uid, fields=list(fields) or None)
        return [_from_json(item) for item in found]

    # -- WADO-RS ----------------------------------------------------------------------------------
    def retrieve_instance_metadata(self, study_instance_uid: str, series_instance_uid: str,
                                   sop_instance_uid: str) -> Dataset:
        item = self._call(f"retrieving the metadata of instance {sop_instance_uid}",
                          self.client.retrieve_instance_metadata, study_instance_uid,
                          series_instance_uid, sop_instance_uid)
        return _from_json(item)

    def retrieve_instance(self, study_instance_uid: str, series_instance_uid: str,
                          sop_instance_uid: str) -> RetrievedInstance:
        what = f"retrieving instance {sop_instance_uid}"
        self._meter.active, self._meter.count = True, 0
        self._meter.what = f"instance {sop_instance_uid} from {self.name}"
        try:
            ds = self._call(what, self.client.retrieve_instance, study_instance_uid,
                            series_instance_uid, sop_instance_uid, media_types=AS_STORED)
        except ImagingError:
            raise
        except Exception as exc:   # dicomweb-client parses each part with pydicom: corrupt bytes land here
            raise UndecodableImage(
                f"instance {sop_instance_uid} from {self.name} is not readable DICOM "
                f"({type(exc).__name__}: {exc}); the stored file may be truncated or corrupt",
                code="corrupt_dicom") from exc
        finally:
            count, self._meter.active = self._meter.count, False
        return RetrievedInstance(ds, count)


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
            if _deflated_dataset_start(head) is not None:
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
