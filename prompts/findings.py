"""Coded findings read back out of a generated report: value types and the labeler."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Presence = Literal["present", "absent", "uncertain", "not_mentioned"]
Laterality = Literal["left", "right", "bilateral"]

PRIMARY_FINDINGS: tuple[str, ...] = (
    "atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion", "pneumothorax",
)
FINDING_NAMES: tuple[str, ...] = PRIMARY_FINDINGS + (
    "pneumonia", "lung_opacity", "nodule_or_mass", "fracture", "support_devices", "no_acute_finding",
)


@dataclass(frozen=True)
class Finding:
    name: str
    presence: Presence = "not_mentioned"
    evidence: str | None = None              # the sentence/phrase the decision rests on
    span: tuple[int, int] | None = None      # character offsets of `evidence` in the report text
    laterality: Laterality | None = None
    severity: str | None = None              # "mild", "moderate", "severe", "small", "large", ...

    def to_json(self) -> dict:
        return {
            "presence": self.presence,
            "evidence": self.evidence,
            "span": list(self.span) if self.span else None,
            "laterality": self.laterality,
            "severity": self.severity,
        }


@dataclass(frozen=True)
class Findings:
    items: tuple[Finding, ...]

    def __getitem__(self, name: str) -> Finding:
        for f in self.items:
            if f.name == name:
                return f
        raise KeyError(f"unknown finding {name!r}; known: {', '.join(FINDING_NAMES)}")

    def __iter__(self):
        return iter(self.items)

    def present(self) -> list[Finding]:
        return [f for f in self.items if f.presence == "present"]

    def mentioned(self) -> list[Finding]:
        return [f for f in self.items if f.presence != "not_mentioned"]

    def to_json(self) -> dict:
        return {f.name: f.to_json() for f in self.items}

    @classmethod
    def from_json(cls, d: dict) -> "Findings":
        items = []
        for name in FINDING_NAMES:
            v = d.get(name) or {}
            span = v.get("span")
            items.append(Finding(name=name, presence=v.get("presence", "not_mentioned"),
                                 evidence=v.get("evidence"), span=tuple(span) if span else None,
                                 laterality=v.get("laterality"), severity=v.get("severity")))
        return cls(tuple(items))


# The labeler lives in its own module (rules + lexicons); imported last because it uses the types above.
from prompts.labeler import extract_findings  # noqa: E402

__all__ = ["Presence", "Laterality", "PRIMARY_FINDINGS", "FINDING_NAMES", "Finding", "Findings",
           "extract_findings"]
