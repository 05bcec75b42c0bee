"""The dicom_sr package's only I/O: read the image header, store the SR (STOW-RS), write one analysis.

``store_sr`` sends the SR with dicomweb-client's ``store_instances`` to the study's STOW-RS resource
(``POST {root}/studies/{StudyInstanceUID}``) and sorts every failure into two types the job layer can
act on: :class:`SrStoreFailed` (``retryable``: connection, timeout, 408/429, 5xx, out of resources)
and :class:`SrStoreRefused` (the PACS said no: 4xx or a failure reason in the response; the message
says why and what to change). Messages and logs carry UIDs, statuses and DICOM reason codes only,
never a response body (it may echo patient attributes) or credentials.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.dataset import Dataset

from imaging import FolderSource, ImagingError, ImagingUnavailable

from .build import build_sr
from .errors import InvalidSrInput, SrStoreFailed, SrStoreRefused
from .header import image_header
from .values import SrInputs, SrRecord

log = logging.getLogger(__name__)

#: Where a folder source keeps SRs (inside its image folder, so its index lists them with the study).
FOLDER_SR_DIR = "cxr-cds-sr"

# PS3.18 Table 10.5.3-1 / PS3.4 Annex GG: STOW-RS failure reasons (the first digits decide for ranges).
_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP Instance",
    0x0122: "SOP Class not supported (the PACS does not store Comprehensive SR)",
    0x0124: "not authorized",
    0xC122: "transfer syntax not supported",
}
_DUPLICATE = 0x0111
_STATUS_HINTS = {
    400: "the PACS could not parse or accept the request",
    401: "check the DICOMweb credentials (username/password or bearer token)",
    403: "the PACS account may read but not store: grant it STOW-RS (store) rights",
    404: "the URL has no STOW-RS resource: check the DICOMweb root URL and that the PACS enables STOW-RS",
    405: "the PACS does not accept STOW-RS here: check that it enables storing over DICOMweb",
    409: "the PACS refused the instance (see the failure reasons)",
    413: "the SR is larger than the PACS accepts: raise its upload limit",
    415: "the PACS does not accept multipart/related; type=application/dicom",
}
_RETRYABLE_STATUS = frozenset({408, 425, 429})


def _reason_text(code: int) -> str:
    if code in _FAILURE_REASONS:
        return f"0x{code:04X} {_FAILURE_REASONS[code]}"
    if code >> 8 == 0xA7:
        return f"0x{code:04X} out of resources"
    if code >> 8 == 0xA9:
        return f"0x{code:04X} data set does not match SOP Class"
    if code >> 12 == 0xC:
        return f"0x{code:04X} cannot understand"
    return f"0x{code:04X}"


def _response_dataset(response: requests.Response | None) -> Dataset | None:
    """The STOW-RS response body as a Dataset, when it is DICOM JSON; None otherwise.

    Orthanc 1.10 answers a refused STOW-RS with 409 and a DICOM JSON body but no Content-Type, so a
    body that looks like JSON is parsed whatever the header says.
    """
    if response is None:
        return None
    try:
        content_type = response.headers.get("Content-Type", "")
        if "json" in content_type or (not content_type and response.content.lstrip()[:1] == b"{"):
            return Dataset.from_json(response.json())
    except Exception:           # a body that is not DICOM JSON: the status alone must explain it
        return None
    return None


def _failures(response: Dataset | None, sop_instance_uid: str) -> list[int]:
    """Failure reasons the response gives for our instance (or for any, when none names it)."""
    if response is None:
        return []
    reasons, ours = [], []
    for item in response.get("FailedSOPSequence") or []:
        reason = item.get("FailureReason")
        if reason is None:
            continue
        reasons.append(int(reason))
        if str(item.get("ReferencedSOPInstanceUID", "")) == sop_instance_uid:
            ours.append(int(reason))
    return ours or reasons


def _retrieve_url(response: Dataset | None, sop_instance_uid: str) -> str | None:
    for item in (response.get("ReferencedSOPSequence") or []) if response is not None else []:
        if str(item.get("ReferencedSOPInstanceUID", "")) == sop_instance_uid:
            url = item.get("RetrieveURL")
            return str(url) if url else None
    return None


def _client_of(target: Any) -> Any:
    client = getattr(target, "client", target)          # imaging.DicomWebSource -> its DICOMwebClient
    if not callable(getattr(client, "store_instances", None)):
        raise TypeError(f"store_sr needs a DICOMwebClient, an imaging.DicomWebSource or an imaging.FolderSource, "
                        f"not {type(target).__name__}")
    return client


def _name(target: Any) -> str:
    name = getattr(target, "name", None)
    if name:
        return str(name)
    return "the PACS"            # a bare client: its URL may carry credentials, so it is not named


def store_sr(target: Any, dataset: Dataset) -> SrRecord:
    """Store an SR in the PACS with STOW-RS (or, for a folder source, as a file in its folder).

    Parameters
    ----------
    target
        A ``dicomweb_client.DICOMwebClient``, an ``imaging.DicomWebSource`` (its client is used) or an
        ``imaging.FolderSource`` (the SR is written to ``<folder>/cxr-cds-sr/<SOPInstanceUID>.dcm``).
    dataset
        The SR, e.g. from :func:`build_sr`.

    Returns
    -------
    SrRecord
        The SR's UIDs (and the RetrieveURL the PACS gave). Storing the same SR again returns the same
        record: the PACS keeps one instance (a "duplicate SOP Instance" refusal counts as stored).

    Raises
    ------
    SrStoreFailed
        Retryable: the PACS is unreachable, timed out, answered 408/429/5xx or is out of resources.
    SrStoreRefused
        Not retryable as is: a 4xx answer or a failure reason for the instance; the message says why.
    """
    sop_uid = str(dataset.SOPInstanceUID)
    study_uid = str(dataset.StudyInstanceUID)
    if isinstance(target, FolderSource):
        return _store_in_folder(target, dataset)
    client = _client_of(target)
    where = _name(target)
    if getattr(dataset, "preamble", None) is None:
        # dicomweb-client writes with pydicom.dcmwrite: without a preamble the PACS may store a file
        # without "DICM" (../shared/reference/IMAGING_FHIR.md §1.1)
        dataset.preamble = b"\x00" * 128
    try:
        response = client.store_instances([dataset], study_instance_uid=study_uid)
    except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
        timeout = isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc).lower()
        raise SrStoreFailed(f"{where} {'did not answer in time' if timeout else 'is unreachable'} while storing "
                            f"SR {sop_uid} (STOW-RS, study {study_uid}); will be retried: check that the PACS "
                            "is running and the DICOMweb URL is right",
                            code="sr_pacs_timeout" if timeout else "sr_pacs_unreachable") from None
    except requests.exceptions.HTTPError as exc:
        failures = _failures(_response_dataset(exc.response), sop_uid)
        if failures and all(code == _DUPLICATE for code in failures):     # e.g. 409: it is there already
            log.info("SR %s was already stored in study %s", sop_uid, study_uid)
            return SrRecord.of(dataset)
        raise _http_error(exc.response, failures, where, sop_uid, study_uid) from None
    except Exception as exc:
        # dicomweb-client's own retry loop (retry=True) ends in retrying.RetryError after its last 5xx
        if type(exc).__name__ == "RetryError":
            raise SrStoreFailed(f"{where} kept failing while storing SR {sop_uid} (STOW-RS, study {study_uid}, "
                                "after the client's retries); will be retried: see the PACS log",
                                code="sr_pacs_error") from None
        raise
    failures = _failures(response, sop_uid)
    if failures and not all(code == _DUPLICATE for code in failures):
        raise _refusal(failures, where, sop_uid, study_uid, status=None)
    log.info("SR %s stored in study %s (STOW-RS)", sop_uid, study_uid)
    return SrRecord.of(dataset, retrieve_url=_retrieve_url(response, sop_uid))


def _refusal(failures: list[int], where: str, sop_uid: str, study_uid: str, *,
             status: int | None) -> SrStoreFailed | SrStoreRefused:
    reasons = ", ".join(_reason_text(code) for code in failures)
    answered = f"answered {status}" if status else "answered"
    if all(code >> 8 == 0xA7 for code in failures):
        return SrStoreFailed(f"{where} {answered} with failure reason {reasons} for SR {sop_uid} (study "
                             f"{study_uid}); will be retried: free storage on the PACS", code="sr_pacs_full",
                             http_status=status)
    return SrStoreRefused(f"{where} refused SR {sop_uid} for study {study_uid} ({answered.replace('answered ', '')}"
                          f"{', ' if status else ''}failure reason {reasons}); not retried: see the PACS log for "
                          "the details, and check that it stores Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33) "
                          "in existing studies", code="sr_refused", http_status=status)


def _http_error(response: requests.Response | None, failures: list[int], where: str, sop_uid: str,
                study_uid: str) -> SrStoreFailed | SrStoreRefused:
    status = response.status_code if response is not None else 0
    reason = (response.reason or "") if response is not None else ""
    if status >= 500 or status in _RETRYABLE_STATUS or status == 0:
        return SrStoreFailed(f"{where} answered {status} {reason} while storing SR {sop_uid} (STOW-RS, study "
                             f"{study_uid}); will be retried: see the PACS log", code="sr_pacs_error",
                             http_status=status or None)
    if failures:
        return _refusal(failures, where, sop_uid, study_uid, status=status)
    hint = _STATUS_HINTS.get(status, "see the PACS log")
    return SrStoreRefused(f"{where} refused SR {sop_uid} for study {study_uid} ({status} {reason}); not retried: "
                          f"{hint}", code="sr_unauthorized" if status in (401, 403) else "sr_refused",
                          http_status=status)


def _store_in_folder(source: FolderSource, dataset: Dataset) -> SrRecord:
    folder = Path(source.path) / FOLDER_SR_DIR
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        # write then rename: the folder index never sees half a file, and a rewrite replaces the same name
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sr-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fp:
            fp.write(buffer.getvalue())
        os.replace(tmp, path)
    except OSError as exc:
        retry = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EAGAIN)
        error = SrStoreFailed if retry else SrStoreRefused
        raise error(f"cannot write SR {dataset.SOPInstanceUID} into {folder} ({exc.strerror}); "
                    + ("will be retried: free disk space" if retry else "check the folder's permissions"),
                    code="sr_folder_full" if retry else "sr_folder_unwritable") from None
    log.info("SR %s written to the image folder for study %s", dataset.SOPInstanceUID, dataset.StudyInstanceUID)
    return SrRecord.of(dataset, retrieve_url=str(path))


def fetch_image_header(source: Any, study_instance_uid: str, series_instance_uid: str,
                       sop_instance_uid: str) -> Dataset:
    """The header an SR needs, of one instance, from its WADO-RS metadata (no pixels transferred).

    Parameters
    ----------
    source
        An ``imaging.ImageSource`` (``DicomWebSource`` or ``FolderSource``).
    study_instance_uid, series_instance_uid, sop_instance_uid
        The instance the analysis read (``Analysis.study``).

    Returns
    -------
    pydicom.Dataset
        :func:`image_header` of the metadata.

    Raises
    ------
    SrStoreFailed
        The PACS is unreachable, timed out or answered 5xx (retryable).
    SrStoreRefused
        The instance is gone, or the PACS refused the request (401/403/4xx).
    InvalidSrInput
        The metadata lacks a UID the SR needs.
    """
    try:
        metadata = source.retrieve_instance_metadata(study_instance_uid, series_instance_uid, sop_instance_uid)
    except ImagingUnavailable as exc:
        if exc.code in ("pacs_unauthorized", "pacs_rejected"):
            raise SrStoreRefused(f"cannot read the header of instance {sop_instance_uid} for its SR: {exc}",
                                 code="sr_header_refused") from None
        raise SrStoreFailed(f"cannot read the header of instance {sop_instance_uid} for its SR: {exc}",
                            code="sr_header_unavailable") from None
    except ImagingError as exc:
        raise SrStoreRefused(f"cannot read the header of instance {sop_instance_uid} for its SR: {exc}",
                             code="sr_header_not_found") from None
    return image_header(metadata)


def read_image_header(path: str | os.PathLike) -> Dataset:
    """The header an SR needs, of a local DICOM file (read without its pixel data).

    Raises
    ------
    InvalidSrInput
        The file cannot be read as DICOM, or lacks a UID the SR needs.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:          # pydicom raises many types for a broken header
        raise InvalidSrInput(f"cannot read the DICOM header of {Path(path).name} ({type(exc).__name__}); "
                             "give the file the analysis read", code="sr_header_unreadable") from None
    return image_header(ds)


def write_for_analysis(source: Any, analysis: Mapping[str, Any] | Any, header: Dataset | None = None) -> SrRecord:
    """Build the SR of one stored analysis and store it in the PACS: the job layer's one call.

    Parameters
    ----------
    source
        The runtime's image source (``imaging.DicomWebSource`` or ``FolderSource``), or a DICOMwebClient
        (then ``header`` is required).
    analysis
        ``Analysis.to_json()`` of a stored analysis (an ``Analysis`` is accepted too).
    header
        The read image's header; None fetches it with WADO-RS metadata (one small request).

    Returns
    -------
    SrRecord
        The SR's UIDs, to record with the analysis. The same for every call with the same analysis.

    Raises
    ------
    SrStoreFailed
        Retryable (``.retryable`` is True): retry later with the same analysis.
    SrStoreRefused, InvalidSrInput
        Not retryable as is: log the message (it holds no identifiers) and record the failure.
    """
    if not isinstance(analysis, Mapping) and callable(getattr(analysis, "to_json", None)):
        analysis = analysis.to_json()
    if header is None:
        study = analysis.get("study") or {}
        uids = [str(study.get(k) or "") for k in ("study_instance_uid", "series_instance_uid", "sop_instance_uid")]
        if not all(uids):
            raise InvalidSrInput(f"analysis {analysis.get('analysis_id')} names no instance read (study UIDs "
                                 "missing); give Analysis.to_json() of a stored analysis", code="sr_bad_analysis")
        if not callable(getattr(source, "retrieve_instance_metadata", None)):
            raise TypeError("write_for_analysis needs an imaging.ImageSource to fetch the header, or the header")
        header = fetch_image_header(source, *uids)
    return store_sr(source, build_sr(SrInputs.from_analysis(analysis, header)))
