"""A DICOMweb PACS (QIDO-RS, WADO-RS) as an :class:`~imaging.source.ImageSource`, via dicomweb-client.

Transport failures become :class:`ImagingUnavailable` here, nowhere else. Every URL this module, or
dicomweb-client, urllib3, requests and retrying below it, writes to a log has its query values
redacted (:class:`RedactQueryValues`): a QIDO query holds the PatientID.
"""
from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

from .errors import ImagingError, ImagingUnavailable, StudyNotFound, UndecodableImage
from .part10 import check_inflated_size
from .source import MAX_BYTES, SERIES_FIELDS, STUDY_FIELDS, RetrievedInstance, byte_size, image_too_large

log = logging.getLogger(__name__)

T = TypeVar("T")

# Ask for the stored encoding: never make the PACS transcode (Orthanc crashes on some transcodings,
# ../shared/reference/IMAGING_FHIR.md §1.4); pydicom decodes every syntax client-side.
AS_STORED = (("application/dicom", "*"),)


#: Loggers that may write a request URL (and so a QIDO query's PatientID): ours and our libraries'.
#: A logging.Filter acts only on records logged to its own logger, so each is named, not a parent.
URL_LOGGERS = ("imaging.dicomweb", "imaging.source", "dicomweb_client", "dicomweb_client.web",
               "dicomweb_client.api", "dicomweb_client.session", "urllib3", "urllib3.connectionpool",
               "urllib3.connection", "urllib3.poolmanager", "urllib3.response", "urllib3.util.retry",
               "requests", "retrying")

# `name=value` after `?`, `&` or `;` in a URL: the value goes (URL-encoded values hold no quote or space).
_QUERY_VALUE = re.compile(r"(?<=[?&;])([A-Za-z0-9_.~%+\-]+)=[^&;#\s'\"<>)\]}]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*")
REDACTED = "<redacted>"


def redact_urls(text: str) -> str:
    """``text`` with every URL query value replaced by ``<redacted>`` (``?PatientID=123&limit=5`` ->
    ``?PatientID=<redacted>&limit=<redacted>``), and any bearer token too."""
    return _BEARER.sub(rf"\1{REDACTED}", _QUERY_VALUE.sub(rf"\1={REDACTED}", text))


class RedactQueryValues(logging.Filter):
    """Rewrites a log record so no URL query value (a QIDO PatientID, an accession number) is written:
    the formatted message, and the traceback text of a logged exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:   # noqa: BLE001 - a record whose args do not format: leave it to the handler
            return True
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_info[1] is not None:
            # Formatter.format uses a set exc_text instead of formatting exc_info itself.
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact_urls(text)
        return True


_redaction = RedactQueryValues()


def install_log_redaction() -> None:
    """Add :class:`RedactQueryValues` to every logger in :data:`URL_LOGGERS` (idempotent)."""
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryValues) for f in logger.filters):
            logger.addFilter(_redaction)


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
        # urllib3's retry warnings ("Retrying (...) after connection broken by ...: /studies?PatientID=...")
        # and dicomweb-client's debug lines carry the query: redact query values in every such logger.
        install_log_redaction()
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
