"""Value types of the dicom_sr package: what an SR is built from, and what a write records."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydicom.dataset import Dataset

from prompts import Findings

from .errors import InvalidSrInput
from .header import image_header


@dataclass(frozen=True, eq=False)
class SrInputs:
    """One stored analysis and the header of the image it read: everything :func:`build_sr` needs.

    ``image_header`` is reduced by :func:`dicom_sr.image_header` at construction (patient, study and
    instance attributes only), so an SR never copies more of the source than it must.
    ``model`` is the analysis' model identity: ``name``, ``revision``, ``dtype``, ``quantization``,
    ``prompt_id``, ``prompt_version`` (and ``scores_prompt``, ``finish_reason`` when present).
    """

    analysis_id: str
    report_text: str
    findings: Findings
    model: Mapping[str, Any]
    image_header: Dataset
    created: datetime
    scores: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if not str(self.analysis_id or "").strip():
            raise InvalidSrInput("analysis_id is empty; the SR's UIDs are derived from it", code="sr_no_analysis_id")
        if not str(self.model.get("name") or "").strip():
            raise InvalidSrInput("the model identity has no name; give the analysis' model dict "
                                 "{name, revision, dtype, quantization, prompt_id, prompt_version}",
                                 code="sr_no_model")
        if not isinstance(self.findings, Findings):
            raise InvalidSrInput(f"findings must be prompts.Findings, not {type(self.findings).__name__}; "
                                 "use Findings.from_json() on a stored analysis' findings", code="sr_bad_findings")
        object.__setattr__(self, "image_header", image_header(self.image_header))
        if self.created.tzinfo is None:
            object.__setattr__(self, "created", self.created.replace(tzinfo=timezone.utc))

    @classmethod
    def from_analysis(cls, analysis: Mapping[str, Any], header: Dataset) -> "SrInputs":
        """From a stored analysis (``cds_hooks.pipeline.Analysis.to_json()``) and the read image's header.

        Raises
        ------
        InvalidSrInput
            A key is missing, or ``header`` is not the instance the analysis read.
        """
        try:
            study = analysis["study"]
            inputs = cls(
                analysis_id=str(analysis["analysis_id"]),
                report_text=str(analysis.get("report") or ""),
                findings=Findings.from_json(analysis.get("findings") or {}),
                model=dict(analysis["model"]),
                image_header=header,
                created=_datetime(analysis.get("created")),
                scores=analysis.get("scores") or None,
            )
        except (KeyError, TypeError) as exc:
            raise InvalidSrInput(f"the analysis lacks {exc}; give Analysis.to_json() of a stored analysis",
                                 code="sr_bad_analysis") from None
        read = str(study.get("sop_instance_uid") or "")
        if read and read != str(inputs.image_header.SOPInstanceUID):
            raise InvalidSrInput(f"the image header is instance {inputs.image_header.SOPInstanceUID} but analysis "
                                 f"{inputs.analysis_id} read instance {read}; fetch the header of the instance read",
                                 code="sr_header_mismatch")
        return inputs


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value)
    raise TypeError("'created'")


@dataclass(frozen=True)
class SrRecord:
    """Where an analysis' SR is (or will be) in the PACS: record it with the analysis.

    The UIDs are derived from the analysis id (:func:`dicom_sr.sr_uids`), so writing again gives the
    same record and the PACS keeps one instance.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    retrieve_url: str | None = None     # what the STOW-RS response said (a folder: the file path)

    def to_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "retrieve_url": self.retrieve_url,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SrRecord":
        return cls(**{k: d.get(k) for k in ("study_instance_uid", "series_instance_uid",
                                             "sop_instance_uid", "sop_class_uid", "retrieve_url")})

    @classmethod
    def of(cls, dataset: Dataset, retrieve_url: str | None = None) -> "SrRecord":
        """The record of a built SR dataset."""
        return cls(study_instance_uid=str(dataset.StudyInstanceUID),
                   series_instance_uid=str(dataset.SeriesInstanceUID),
                   sop_instance_uid=str(dataset.SOPInstanceUID), sop_class_uid=str(dataset.SOPClassUID),
                   retrieve_url=retrieve_url)


__all__ = ["SrInputs", "SrRecord"]
