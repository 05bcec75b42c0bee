"""From a study (or a file) to the :class:`RadiographImage` the model gets: locate, select, fetch, decode."""
from __future__ import annotations

import os
from collections.abc import Callable
from datetime import date
from pathlib import Path

from pydicom.dataset import Dataset

from .errors import ImagingUnavailable, NoFrontalRadiograph, StudyNotFound, UndecodableImage, UnsupportedImage
from .fingerprint import instance_fingerprint
from .isolation import DEFAULT_DECODE_LIMITS, DecodeLimits
from .locate import locate_studies, parse_da
from .part10 import parse_dicom
from .render import MAX_PIXELS, render_reduced
from .select import FILE_EXCLUSIONS, classify, select_frontal
from .source import MAX_BYTES, ImageSource, byte_size, image_too_large
from .values import RadiographImage, Selection, StudyMatch


def _spacing(ds: Dataset, scale: int = 1) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm of the output pixels: the stored spacing x ``scale`` (2**reduction)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) == 2:
                spacing = (float(value[0]) * scale, float(value[1]) * scale)   # (row, column), mm
                if spacing[0] <= 0 or spacing[1] <= 0:
                    continue                                      # "0\\0" is written by some CR readers
                note = None if keyword == "PixelSpacing" else "pixel spacing from ImagerPixelSpacing (at the detector)"
                return spacing, note
        except (TypeError, ValueError):
            continue
    return None, None


#: ``known_undecodable(sop_instance_uid)``: the :class:`UndecodableImage` recorded for that instance
#: (with its ``fingerprint``), or None.
KnownUndecodable = Callable[[str], "UndecodableImage | None"]


def _radiograph(ds: Dataset, *, what: str, view: str | None, reason: str | None,
                bytes_transferred: int | None, max_pixels: int, min_short_edge: int | None = None,
                extra_notes: tuple[str, ...] = (),
                decode_limits: DecodeLimits = DEFAULT_DECODE_LIMITS) -> RadiographImage:
    pixels, notes, reduction = render_reduced(ds, max_pixels=max_pixels, what=what, min_short_edge=min_short_edge,
                                              decode_limits=decode_limits)   # (H, W) uint8 MONOCHROME2
    # A reduced J2K decode samples every 2**reduction-th stored pixel position (the wavelet low-pass
    # band is centred on them), so the pitch of the output grid is the stored spacing x 2**reduction.
    spacing, spacing_note = _spacing(ds, 1 << reduction)
    view_position = str(ds.get("ViewPosition") or "").strip().upper() or (view if view in ("PA", "AP") else None)
    laterality = str(ds.get("ImageLaterality") or ds.get("Laterality") or "").strip().upper() or None
    return RadiographImage(
        pixels=pixels,
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        accession_number=str(ds.get("AccessionNumber") or "") or None,
        study_date=parse_da(ds.get("StudyDate")),
        view_position=view_position,
        laterality=laterality,
        pixel_spacing=spacing,
        modality=str(ds.get("Modality") or "") or None,
        selection_reason=reason,
        bytes_transferred=bytes_transferred,
        notes=tuple(extra_notes) + notes + ((spacing_note,) if spacing_note else ()),
    )


def _recorded(known_undecodable: KnownUndecodable | None, ds: Dataset, sop_instance_uid: str
              ) -> UndecodableImage | None:
    """A fresh copy of the failure recorded for this instance version, or None (not recorded, or changed)."""
    if known_undecodable is None:
        return None
    recorded = known_undecodable(sop_instance_uid)
    if recorded is None or not recorded.fingerprint:
        return None
    fingerprint = instance_fingerprint(ds)
    if fingerprint != recorded.fingerprint:
        return None                                 # the stored instance changed since: decode it again
    return UndecodableImage(recorded.message, code=recorded.code, sop_instance_uid=sop_instance_uid,
                            fingerprint=fingerprint)


def fetch_radiograph(source: ImageSource, study: StudyMatch | str, selection: Selection, *,
                     max_pixels: int = MAX_PIXELS, min_short_edge: int | None = None,
                     decode_limits: DecodeLimits = DEFAULT_DECODE_LIMITS,
                     known_undecodable: KnownUndecodable | None = None) -> RadiographImage:
    """WADO-RS of the selected instance only (as stored, no transcoding), decoded for display.

    Parameters
    ----------
    source
        A DICOMweb or folder source.
    study
        The :class:`StudyMatch` (or StudyInstanceUID) the selection belongs to.
    selection
        From :func:`select_frontal`.
    max_pixels
        Pixel-count limit per frame (decompression-bomb guard).
    min_short_edge
        Opt-in: decode JPEG 2000 / HTJ2K grayscale images at the coarsest resolution level whose short
        edge is still >= this many pixels (e.g. 1024 = 2 x the model's 512 px input), with a note and
        the pixel spacing scaled; other transfer syntaxes are unaffected. None or 0: full resolution.
    decode_limits
        Time and memory limits of the child process that decodes compressed pixel data.
    known_undecodable
        ``sop_instance_uid -> UndecodableImage | None``: the failure recorded for the instance (e.g. by
        the job layer from an earlier :class:`UndecodableImage`). When its ``fingerprint`` equals the
        retrieved instance's (:func:`imaging.instance_fingerprint`), a copy of it is raised without
        decoding again; a changed instance is decoded.

    Returns
    -------
    RadiographImage
        With ``bytes_transferred`` measured on the wire (or file size for a folder).

    Raises
    ------
    ImagingUnavailable, StudyNotFound, UnsupportedImage
    UndecodableImage
        Carries ``sop_instance_uid`` and, once the instance was read, ``fingerprint``.
    """
    study_uid = study.study_instance_uid if isinstance(study, StudyMatch) else str(study)
    try:
        retrieved = source.retrieve_instance(study_uid, selection.series_instance_uid, selection.sop_instance_uid)
    except UndecodableImage as exc:                 # not readable DICOM: no dataset, so no fingerprint
        exc.sop_instance_uid = exc.sop_instance_uid or selection.sop_instance_uid
        raise
    ds = retrieved.dataset
    if str(ds.get("SOPInstanceUID", "")) != selection.sop_instance_uid:
        raise ImagingUnavailable(f"{source.name} returned instance {ds.get('SOPInstanceUID', '(none)')} when "
                                 f"asked for {selection.sop_instance_uid}; check the PACS", code="pacs_wrong_instance")
    recorded = _recorded(known_undecodable, ds, selection.sop_instance_uid)
    if recorded is not None:
        raise recorded
    return _radiograph(ds, what=f"instance {selection.sop_instance_uid}", view=selection.view,
                       reason=selection.reason, bytes_transferred=retrieved.bytes_transferred,
                       max_pixels=max_pixels, min_short_edge=min_short_edge, decode_limits=decode_limits)


def find_radiograph(source: ImageSource, *, max_pixels: int = MAX_PIXELS, min_short_edge: int | None = None,
                    study_instance_uid: str | None = None, accession_number: str | None = None,
                    patient_id: str | None = None, date_range: tuple[date | None, date | None] | None = None,
                    decode_limits: DecodeLimits = DEFAULT_DECODE_LIMITS,
                    known_undecodable: KnownUndecodable | None = None) -> RadiographImage:
    """Locate + select + fetch + decode: the newest matching study that has a frontal radiograph.

    Parameters
    ----------
    source
        A DICOMweb or folder source.
    max_pixels
        Pixel-count limit per frame.
    min_short_edge, decode_limits, known_undecodable
        As for :func:`fetch_radiograph`.
    study_instance_uid, accession_number, patient_id, date_range
        As for :func:`locate_studies`.

    Raises
    ------
    StudyNotFound
        No study matches (the message names the criteria, never the PatientID).
    NoFrontalRadiograph
        Studies exist but none has a frontal CR/DX image (the newest study's message).
    ImagingUnavailable, UnsupportedImage, UndecodableImage
    """
    studies = locate_studies(source, study_instance_uid=study_instance_uid, accession_number=accession_number,
                             patient_id=patient_id, date_range=date_range)
    if not studies:
        asked = []
        if study_instance_uid:
            asked.append(f"StudyInstanceUID {study_instance_uid}")
        if accession_number:
            asked.append(f"AccessionNumber {accession_number}")
        if patient_id:
            asked.append("the given PatientID with CR/DX studies")   # the identifier itself stays out of logs
        if date_range and (date_range[0] or date_range[1]):
            lo, hi = date_range
            span = f"{lo} to {hi}" if lo and hi else f"from {lo}" if lo else f"up to {hi}"
            asked.append(f"StudyDate {span}")
        raise StudyNotFound(f"no study in {source.name} matches {' and '.join(asked)}; "
                            "the image may not be acquired yet, or is stored under another accession")
    first_error: NoFrontalRadiograph | None = None
    for study in studies:                          # newest first
        try:
            selection = select_frontal(source, study)
        except (NoFrontalRadiograph, StudyNotFound) as exc:
            if isinstance(exc, NoFrontalRadiograph) and first_error is None:
                first_error = exc
            continue
        return fetch_radiograph(source, study, selection, max_pixels=max_pixels, min_short_edge=min_short_edge,
                                decode_limits=decode_limits, known_undecodable=known_undecodable)
    if first_error is not None:
        if len(studies) > 1:
            raise NoFrontalRadiograph(f"{first_error} (and none in {len(studies) - 1} older matching studies)")
        raise first_error
    raise StudyNotFound(f"the {len(studies)} matching studies in {source.name} hold no series",
                        code="study_empty")


def read_radiograph(path_or_bytes: str | os.PathLike | bytes, *, max_pixels: int = MAX_PIXELS,
                    min_short_edge: int | None = None, max_bytes: int = MAX_BYTES,
                    decode_limits: DecodeLimits = DEFAULT_DECODE_LIMITS) -> RadiographImage:
    """A local DICOM file (or its bytes) as a :class:`RadiographImage` (what ``cxr-cds analyze FILE`` uses).

    The same metadata rules as for a PACS study apply, laxer on what the user chose explicitly: a
    secondary capture or an image without view information is accepted with a note; CT/MR/SR/PR,
    localisers, other body parts and lateral/oblique/decubitus views are refused. ``max_pixels``,
    ``min_short_edge`` and ``decode_limits`` are as for :func:`fetch_radiograph`; ``max_bytes`` caps the
    file's size and a Deflated data set's inflated size.

    Raises
    ------
    StudyNotFound
        The path does not exist.
    UnsupportedImage
        Not a radiograph (e.g. CT), or no pixel data, or over the pixel or byte limit.
    NoFrontalRadiograph
        A lateral (oblique, decubitus) view, a localiser or a non-chest radiograph.
    UndecodableImage
        Not DICOM, truncated, corrupt, no decoder for its transfer syntax, a malformed pixel-related
        header value (code ``bad_image_header``), or a decoder that crashed, timed out or ran out of
        memory in its child process (``decoder_crashed``, ``decode_timeout``, ``decode_memory_limit``).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, what = bytes(path_or_bytes), "DICOM bytes"
    else:
        path = Path(path_or_bytes)
        what = f"file {path.name}"
        try:
            size = path.stat().st_size
            data = path.read_bytes() if size <= max_bytes else b""
        except FileNotFoundError as exc:
            raise StudyNotFound(f"{path} does not exist", code="file_not_found") from exc
        except OSError as exc:
            raise ImagingUnavailable(f"cannot read {path} ({exc.strerror})", code="file_unreadable") from exc
        if size > max_bytes:                      # refused before reading it into memory
            raise image_too_large(what, byte_size(size), max_bytes)
    ds = parse_dicom(data, what=what, max_bytes=max_bytes)
    if "SOPClassUID" not in ds and "PixelData" not in ds:
        raise UnsupportedImage(f"{what} is not a DICOM image (no SOP Class UID, no Pixel Data)", code="not_dicom")
    verdict = classify(ds, FILE_EXCLUSIONS)
    if verdict.view is None:
        if verdict.excluded and "Modality" in verdict.evidence:
            raise UnsupportedImage(f"{what} is a {verdict.label} image ({verdict.evidence}), not a chest "
                                   "radiograph; give a frontal CR/DX chest image", code="not_a_radiograph")
        raise NoFrontalRadiograph(f"{what}: not a frontal chest radiograph ({verdict.label}, by {verdict.evidence}); "
                                  "give a PA or AP chest image")
    notes = ()
    if str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.7"):
        notes = ("secondary capture: a copy of an image, quality may be reduced",)
    reason = f"local file; {verdict.view} by {verdict.evidence}" if verdict.view != "UNKNOWN" else \
        "local file; view not recorded, assumed frontal"
    return _radiograph(ds, what=what, view=verdict.view, reason=reason, bytes_transferred=len(data),
                       max_pixels=max_pixels, min_short_edge=min_short_edge, extra_notes=notes,
                       decode_limits=decode_limits)
