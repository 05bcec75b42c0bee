"""Change since the prior study, read from two sets of coded findings (two AI drafts, not two images).

CXR-LLAVA reads one image at a time, so "what changed" is answered by comparing the coded findings
of the current study's draft with those of the prior study's draft, finding by finding:

===============  =====================================================================================
new              absent in the prior report, present now
resolved         present in the prior report, absent now
worse            present in both; larger severity (``SEVERITY_RANK``) or one side -> both sides
better           present in both; smaller severity, or both sides -> one side
unchanged        present in both with no stated change (or absent in both)
not_comparable   uncertain in either report, mentioned in only one of them, reported on the other
                 side, or severity and extent changed in opposite directions
===============  =====================================================================================

A finding neither report mentions is left out; ``no_acute_finding`` is not a finding to compare.
Pure: values in, values out; each item keeps the evidence phrase of both reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from prompts.findings import FINDING_NAMES, Finding, Findings

ChangeKind = Literal["new", "resolved", "worse", "better", "unchanged", "not_comparable"]

#: The change categories, in the order they are reported (what a reader needs first comes first).
CHANGE_ORDER: tuple[ChangeKind, ...] = ("new", "worse", "resolved", "better", "unchanged", "not_comparable")

#: Severity words of the labeler (prompts/lexicon/cues.json) on one ordinal scale, the one place it is
#: stated: trace/tiny/minimal/small/mild < (ranges) < moderate < (ranges) < large/severe.
SEVERITY_RANK: dict[str, int] = {
    "trace": 1, "tiny": 1, "minimal": 1, "small": 1, "mild": 1,
    "small-to-moderate": 2, "mild-to-moderate": 2,
    "moderate": 3,
    "moderate-to-large": 4, "moderate-to-severe": 4,
    "large": 5, "severe": 5,
}

#: Findings that are not compared (a summary statement, not a finding with a course).
NOT_COMPARED = frozenset({"no_acute_finding"})


@dataclass(frozen=True)
class Change:
    """One finding's change since the prior study, with both reports' findings (and their evidence)."""

    name: str
    change: ChangeKind
    current: Finding
    prior: Finding
    reason: str                     # why this category, in a few words ("moderate now, mild before")

    @property
    def current_evidence(self) -> str | None:
        return self.current.evidence

    @property
    def prior_evidence(self) -> str | None:
        return self.prior.evidence

    def to_json(self) -> dict:
        return {"name": self.name, "change": self.change, "reason": self.reason,
                "current": self.current.to_json(), "prior": self.prior.to_json()}


@dataclass(frozen=True)
class Comparison:
    """The per-finding changes between two drafts, in ``FINDING_NAMES`` order; ``prior_date`` when known."""

    items: tuple[Change, ...]
    prior_date: date | None = None

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, name: str) -> Change:
        for item in self.items:
            if item.name == name:
                return item
        raise KeyError(f"{name!r} is mentioned in neither report (or is not compared); "
                       f"compared: {', '.join(i.name for i in self.items) or 'none'}")

    def of(self, *kinds: ChangeKind) -> list[Change]:
        """The items of these categories, in the order of ``kinds`` then of ``FINDING_NAMES``."""
        return [item for kind in kinds for item in self.items if item.change == kind]

    def ordered(self) -> list[Change]:
        """Every item, new and worse first (``CHANGE_ORDER``)."""
        return self.of(*CHANGE_ORDER)

    def to_json(self) -> dict:
        return {"prior_date": self.prior_date.isoformat() if self.prior_date else None,
                "items": [item.to_json() for item in self.items]}


def _rank(severity: str | None) -> int | None:
    return SEVERITY_RANK.get(severity.lower()) if severity else None


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _both_present(current: Finding, prior: Finding) -> tuple[ChangeKind, str]:
    """worse / better / unchanged / not_comparable for a finding present in both reports."""
    now, before = _rank(current.severity), _rank(prior.severity)
    severity = _sign(now - before) if now is not None and before is not None else 0
    sides = {None: None, "left": 1, "right": 1, "bilateral": 2}
    if current.laterality and prior.laterality and current.laterality != prior.laterality \
            and "bilateral" not in (current.laterality, prior.laterality):
        return "not_comparable", f"{prior.laterality} before, {current.laterality} now"
    a, b = sides[current.laterality], sides[prior.laterality]
    extent = _sign(a - b) if a is not None and b is not None else 0
    if severity and extent and severity != extent:
        return "not_comparable", "severity and extent changed in opposite directions"
    direction = severity or extent
    details = []
    if severity or (now is not None and before is not None and current.severity != prior.severity):
        details.append(f"{current.severity} now, {prior.severity} before")
    if extent:
        details.append(f"{current.laterality} now, {prior.laterality} before")
    if (now is None) != (before is None):
        details.append(f"severity stated in the {'current' if now is not None else 'prior'} report only")
    if direction > 0:
        return "worse", "; ".join(details)
    if direction < 0:
        return "better", "; ".join(details)
    return "unchanged", "; ".join(details) or "present in both reports"


def _change(current: Finding, prior: Finding) -> tuple[ChangeKind, str]:
    c, p = current.presence, prior.presence
    if c == "uncertain" or p == "uncertain":
        side = "both reports" if c == p else ("the current report" if c == "uncertain" else "the prior report")
        return "not_comparable", f"uncertain in {side}"
    if c == "not_mentioned" or p == "not_mentioned":
        return "not_comparable", f"not mentioned in the {'current' if c == 'not_mentioned' else 'prior'} report"
    if c == "present" and p == "absent":
        return "new", "absent before, present now"
    if c == "absent" and p == "present":
        return "resolved", "present before, absent now"
    if c == "absent" and p == "absent":
        return "unchanged", "absent in both reports"
    return _both_present(current, prior)


def compare_findings(current: Findings, prior: Findings, *, prior_date: date | None = None) -> Comparison:
    """Compare the coded findings of the current draft with those of the prior study's draft.

    Parameters
    ----------
    current, prior : Findings
        The findings read from each report (``extract_findings``), by the same model and prompt
        version: comparing drafts of different versions mixes model change with patient change.
    prior_date : date, optional
        The prior study's date, carried on the result for the wording ("Change since 2026-11-20").

    Returns
    -------
    Comparison
        One ``Change`` per finding mentioned in either report (``FINDING_NAMES`` order, without
        ``no_acute_finding``); see the module docstring for the categories.
    """
    items = []
    for name in FINDING_NAMES:
        if name in NOT_COMPARED:
            continue
        c, p = current[name], prior[name]
        if c.presence == "not_mentioned" and p.presence == "not_mentioned":
            continue
        kind, reason = _change(c, p)
        items.append(Change(name=name, change=kind, current=c, prior=p, reason=reason))
    return Comparison(items=tuple(items), prior_date=prior_date)
