"""Value types of the imaging package: frozen, valid once constructed, identifier-free."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StudyMatch:
    """One study found by :func:`imaging.locate_studies` (QIDO-RS study level)."""

    study_instance_uid: str
    study_date: date | None
    accession_number: str | None
    modalities: tuple[str, ...]
    description: str | None
    # DICOM PatientID (0010,0020) as the PACS answered it: compared with the EHR Patient's MRNs before a
    # draft is attached to that Patient. An identifier: never logged, never in messages, not in repr.
    patient_id: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Selection:
    """Which instance of a study was chosen, and why.

    ``considered`` holds one label per instance looked at, e.g. ``("PA", "LL", "CT")``.
    """

    series_instance_uid: str
    sop_instance_uid: str
    view: str
    reason: str
    considered: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class RadiographImage:
    """A chest radiograph ready for the model, with the attributes the report needs.

    ``pixels`` is (H, W) uint8, MONOCHROME2 (0 = black), after modality LUT, VOI LUT and inversion.
    """

    pixels: np.ndarray
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    accession_number: str | None
    study_date: date | None
    view_position: str | None
    laterality: str | None
    pixel_spacing: tuple[float, float] | None
    modality: str | None
    selection_reason: str | None
    bytes_transferred: int | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        px = self.pixels
        if not isinstance(px, np.ndarray) or px.dtype != np.uint8 or px.ndim != 2:
            got = f"{type(px).__name__} {getattr(px, 'dtype', '')} {getattr(px, 'shape', '')}".strip()
            raise ValueError(f"RadiographImage.pixels must be a (H, W) uint8 array, got {got}")
        px.setflags(write=False)   # frozen means frozen: the model and the cache share this array

    def study_json(self) -> dict[str, Any]:
        """The metadata as JSON-ready values, without pixels (for ``--json`` and stored analyses)."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "accession_number": self.accession_number,
            "study_date": self.study_date.isoformat() if self.study_date else None,
            "view_position": self.view_position,
            "laterality": self.laterality,
            "pixel_spacing": list(self.pixel_spacing) if self.pixel_spacing else None,
            "modality": self.modality,
            "rows": int(self.pixels.shape[0]),
            "columns": int(self.pixels.shape[1]),
            "bytes_transferred": self.bytes_transferred,
            "notes": list(self.notes),
            "selected": {
                "series_instance_uid": self.series_instance_uid,
                "sop_instance_uid": self.sop_instance_uid,
                "view": self.view_position,
                "reason": self.selection_reason,
            },
        }
