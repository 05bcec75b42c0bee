"""CheXpert's label CSV (``train.csv`` / ``valid.csv``): one row per image, 14 label columns.

Its label columns are also MIMIC-CXR-JPG's (the CheXpert labeler run on MIMIC-CXR reports), so
`chexpert_labels` serves both layouts.
"""
from __future__ import annotations

from pathlib import Path

from evaluation.cases import Case, Label, Manifest, Skipped
from evaluation.errors import ManifestError
from evaluation.layouts import cells

# CheXpert / MIMIC-CXR-JPG label column -> our finding name. "Enlarged Cardiomediastinum" and
# "Pleural Other" have no counterpart in FINDING_NAMES and are ignored.
CHEXPERT_COLUMNS: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Pleural Effusion": "pleural_effusion",
    "Pneumothorax": "pneumothorax",
    "Pneumonia": "pneumonia",
    "Lung Opacity": "lung_opacity",
    "Lung Lesion": "nodule_or_mass",
    "Fracture": "fracture",
    "Support Devices": "support_devices",
    "No Finding": "no_acute_finding",
}
# columns only CheXpert-style label files have (layout detection)
CHEXPERT_ONLY = {"Lung Lesion", "No Finding", "Enlarged Cardiomediastinum", "Pleural Other"}


def chexpert_labels(r: dict[str, str]) -> dict[str, Label]:
    """The labelled findings of one CheXpert / MIMIC-CXR-JPG row; `ValueError` for a bad cell."""
    labels = {}
    for col, name in CHEXPERT_COLUMNS.items():
        if col in r:
            lab = cells.label(r[col], col)
            if lab is not None:
                labels[name] = lab
    return labels


def read_chexpert(path: Path, header: list[str], rows: list[dict[str, str]], root: Path | None) -> Manifest:
    """The frontal rows of a CheXpert label CSV; lateral views and bad rows are skipped with a reason."""
    path_col = "Path" if "Path" in header else next((h for h in header if cells.norm(h) == "path"), None)
    if path_col is None:
        raise ManifestError(f"CheXpert manifest {path} has no `Path` column; columns: {', '.join(header)}")
    if not set(header) & set(CHEXPERT_COLUMNS):
        raise ManifestError(f"CheXpert manifest {path} has none of the label columns "
                            f"{', '.join(CHEXPERT_COLUMNS)}")
    # CheXpert's Path starts with the dataset folder ("CheXpert-v1.0-small/valid/..."), so it is
    # relative to the folder *holding* the dataset: try the manifest's folder, then its parent.
    bases = [root] if root is not None else [path.parent, path.parent.parent]
    cases, skipped = [], []
    for i, r in enumerate(rows, start=1):
        cell = r.get(path_col, "")
        # a site's own export in this layout may carry identifiers in its paths: hash them
        case_id = cells.path_case_id(cell, bases) if cell else None
        if r.get("Frontal/Lateral", "").lower() == "lateral":
            skipped.append(Skipped(i, case_id, "lateral view (only frontal images are evaluated)"))
            continue
        try:
            if not cell:
                raise ValueError("the `Path` cell is empty")
            labels = chexpert_labels(r)
            context = cells.context(r.get("Age", ""), r.get("Sex", ""), "")
        except ValueError as exc:
            skipped.append(Skipped(i, case_id, str(exc)))
            continue
        cases.append(Case(case_id=case_id, row=i, path=cells.resolve(cell, bases), labels=labels, context=context))
    return Manifest(path, "chexpert", tuple(cases), tuple(skipped))
