"""What the layout readers share: reading a label CSV, parsing its cells, resolving paths, case ids."""
from __future__ import annotations

import csv
import gzip
import hashlib
import re
from pathlib import Path, PurePath
from typing import Callable, Iterable

from evaluation.cases import Label
from evaluation.errors import ManifestError
from prompts.context import ClinicalContext

_LABEL_VALUES: dict[str, Label | None] = {
    "1": "present", "1.0": "present", "present": "present", "positive": "present", "yes": "present",
    "true": "present",
    "0": "absent", "0.0": "absent", "absent": "absent", "negative": "absent", "no": "absent",
    "false": "absent", "": "absent", "not_mentioned": "absent", "not mentioned": "absent",
    "-1": "uncertain", "-1.0": "uncertain", "uncertain": "uncertain",
    # explicitly not labelled: the finding is left out for this case
    "na": None, "n/a": None, "nan": None, "unknown": None, "?": None,
}
_SEX_VALUES = {"m": "male", "male": "male", "f": "female", "female": "female", "o": "other",
               "other": "other", "u": "unknown", "unknown": "unknown", "": None}


def path_case_id(value: str | Path, bases: Iterable[Path] = ()) -> str:
    """A short, stable case id for a row without an id column: ``img-`` + 12 hex of SHA-256.

    Site exports often carry MRNs or accession numbers in folder and file names; the id written to
    per_image.csv, results.json and report.html must not. The hash is of the path relative to the
    first of ``bases`` that holds it (as written when none does), with ``/`` separators, so the id
    survives moving the dataset. Not anonymisation: a short identifier in a known path pattern can be
    recovered by hashing every candidate; give an ``id`` column before sharing results.
    """
    p = PurePath(value)
    for base in bases:
        try:
            p = p.relative_to(base)
            break
        except ValueError:
            continue
    return "img-" + hashlib.sha256(p.as_posix().encode("utf-8")).hexdigest()[:12]


def read_csv(path: Path, header_only: bool = False) -> tuple[list[str], list[dict[str, str]]]:
    """The stripped header and rows of a CSV (``.gz`` too); `ManifestError` when it cannot be read."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if not header:
                raise ManifestError(f"{path} is empty; a manifest needs a header row")
            if header_only:
                return header, []
            rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()}
                    for r in reader]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise ManifestError(f"cannot read {path} as CSV: {exc}") from exc
    return header, rows


def norm(column: str) -> str:
    """A column name lower-cased, with spaces, dashes and slashes as ``_``."""
    return re.sub(r"[\s\-/]+", "_", column.strip().lower())


def label(value: str, column: str) -> Label | None:
    """One label cell; None for explicitly not labelled; `ValueError` naming the value otherwise."""
    key = value.strip().lower()
    if key not in _LABEL_VALUES:
        raise ValueError(f"column {column!r} holds {value!r}; use present/absent/uncertain, "
                         "1/0/-1 or blank (not mentioned), or NA for not labelled")
    return _LABEL_VALUES[key]


def context(age: str, sex: str, indication: str) -> ClinicalContext:
    """The clinical context from age, sex and indication cells; `ValueError` for a bad cell."""
    age_years = None
    if age.strip():
        try:
            age_years = int(float(age))
        except ValueError:
            raise ValueError(f"age {age!r} is not a number of years") from None
        if not 0 <= age_years <= 130:
            raise ValueError(f"age {age_years} is outside 0-130 years")
    sex_value = _SEX_VALUES.get(sex.strip().lower())
    if sex.strip() and sex_value is None:
        raise ValueError(f"sex {sex!r} is not one of M/F/O/U, male/female/other/unknown")
    return ClinicalContext(age_years=age_years, sex=sex_value, reason=indication.strip() or None)


def resolve(value: str, bases: list[Path]) -> Path:
    """An image path: absolute as given, else under the first base that holds it (else the first base)."""
    p = Path(value)
    if p.is_absolute():
        return p
    candidates = [base / p for base in bases]
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def labels_from_report(text: str, labeler: Callable[[str], object] | None) -> dict[str, Label]:
    """Labels from report text (default labeler ``prompts.extract_findings``; not mentioned = absent)."""
    if labeler is None:
        from prompts import extract_findings as labeler
    findings = labeler(text)
    return {f.name: ("absent" if f.presence == "not_mentioned" else f.presence) for f in findings}


def split_values(values: Iterable[str]) -> str:
    """The distinct split names seen, for messages (at most eight)."""
    seen = sorted({v for v in values if v})
    return ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "") if seen else "none"
