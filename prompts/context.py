"""The clinical context a prompt may know about: one typed, identifier-free value."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date
from typing import Literal

Sex = Literal["male", "female", "other", "unknown"]


@dataclass(frozen=True)
class ClinicalContext:
    """What the model is told about the patient and the order.

    Holds no identifiers (no names, MRNs, FHIR ids): it is written into prompts and
    hashed into cache keys, so it must be safe to store next to an analysis.
    """

    age_years: int | None = None
    sex: Sex | None = None
    reason: str | None = None                 # reason for the exam (ServiceRequest.reasonCode/text)
    conditions: tuple[str, ...] = ()          # relevant active conditions, display text
    care_setting: str | None = None           # Encounter.class display: "emergency", "inpatient", ...
    prior_study_date: date | None = None      # most recent prior chest radiograph, when known

    @property
    def is_empty(self) -> bool:
        return self == ClinicalContext()

    def to_json(self) -> dict:
        d = asdict(self)
        d["conditions"] = list(self.conditions)
        d["prior_study_date"] = self.prior_study_date.isoformat() if self.prior_study_date else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ClinicalContext":
        prior = d.get("prior_study_date")
        return cls(
            age_years=d.get("age_years"),
            sex=d.get("sex"),
            reason=d.get("reason"),
            conditions=tuple(d.get("conditions") or ()),
            care_setting=d.get("care_setting"),
            prior_study_date=date.fromisoformat(prior) if prior else None,
        )

    def key(self) -> str:
        """Stable short hash of the context, for cache keys (no identifiers inside)."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
