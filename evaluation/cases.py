"""Labelled cases: what every dataset reader returns (a `Manifest` of `Case`s and `Skipped` rows).

Labels follow the CheXpert convention: 1/present, 0/absent, -1/uncertain, and a blank cell means
"not mentioned", which counts as absent (how the paper's labels were made).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prompts.context import ClinicalContext
from prompts.findings import FINDING_NAMES

Label = Literal["present", "absent", "uncertain"]
ALL_SPLITS = "all"


@dataclass(frozen=True)
class Case:
    """One labelled image.

    ``labels`` holds only the findings the dataset labels for this case; a finding that is not a
    key is unknown and left out of that finding's metrics. ``row`` is the 1-based data row (CSV)
    or file number (XML) in the manifest, for messages.
    """

    case_id: str
    row: int
    path: Path
    labels: dict[str, Label]
    context: ClinicalContext = field(default_factory=ClinicalContext)
    reference_report: str | None = None
    abnormal: Label | None = None          # explicit normal/abnormal label when the dataset has one


@dataclass(frozen=True)
class Skipped:
    """A manifest row that was not used, and why (no patient identifiers in ``reason``)."""

    row: int
    case_id: str | None
    reason: str

    def to_json(self) -> dict:
        return {"row": self.row, "case_id": self.case_id, "reason": self.reason}


@dataclass(frozen=True)
class Manifest:
    """The usable cases of a dataset, the rows skipped (with reasons) and the split filter applied.

    ``split`` is the split kept ("all": no filter), ``split_source`` where the split came from
    (the MIMIC-CXR split file's name or "split column"), ``split_excluded`` the rows outside it
    (counted, not listed: for MIMIC-CXR they are most of the file).
    """

    source: Path
    layout: str
    cases: tuple[Case, ...]
    skipped: tuple[Skipped, ...] = ()
    split: str = ALL_SPLITS
    split_source: str | None = None
    split_excluded: int = 0

    @property
    def findings(self) -> tuple[str, ...]:
        """The findings labelled for at least one case, in FINDING_NAMES order."""
        seen = {name for case in self.cases for name in case.labels}
        return tuple(name for name in FINDING_NAMES if name in seen)


__all__ = ["ALL_SPLITS", "Case", "Label", "Manifest", "Skipped"]
