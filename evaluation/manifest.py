"""Labelled datasets: `read_manifest` picks the layout's reader; our own CSV manifest is read here.

Layouts: our CSV (this module), CheXpert and MIMIC-CXR label CSVs and Indiana/OpenI report XML
(one reader each under `evaluation.layouts`). Every reader returns a `Manifest`: the cases it could
use and the rows it had to skip, with the reason. A bad row never stops the read; a file that cannot
be a manifest at all raises `ManifestError`. Labels follow the CheXpert convention: 1/present,
0/absent, -1/uncertain, and a blank cell means "not mentioned", which counts as absent (how the
paper's labels were made).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Literal

from evaluation.cases import ALL_SPLITS, Case, Label, Manifest, Skipped
from evaluation.errors import ManifestError
from evaluation.images import load_image
from evaluation.layouts import cells
from evaluation.layouts.cells import path_case_id
from evaluation.layouts.chexpert import CHEXPERT_COLUMNS, CHEXPERT_ONLY, read_chexpert
from evaluation.layouts.mimic import read_mimic
from evaluation.layouts.openi import read_openi
from prompts.findings import FINDING_NAMES

Layout = Literal["auto", "csv", "chexpert", "mimic", "openi"]
LAYOUTS: tuple[str, ...] = ("auto", "csv", "chexpert", "mimic", "openi")


def read_manifest(path: str | Path, *, layout: str = "auto", images_root: str | Path | None = None,
                  labeler: Callable[[str], object] | None = None, split: str | None = None) -> Manifest:
    """Read a labelled dataset.

    Parameters
    ----------
    path
        A CSV manifest (ours, CheXpert's ``train.csv``/``valid.csv``, MIMIC-CXR's
        ``mimic-cxr-2.0.0-chexpert.csv[.gz]``), an OpenI report XML, or a folder of them.
    layout
        One of LAYOUTS; "auto" decides from the file's header (or ``.xml`` / a folder: OpenI).
    images_root
        Where relative image paths start. Default: the manifest's folder (CheXpert: also its parent,
        since its ``Path`` column starts with the dataset folder's name).
    labeler
        Report text -> ``prompts.Findings``; default ``prompts.extract_findings``. Used when labels
        come from report text (our CSV with a ``report`` column only, OpenI XML).
    split
        The split to keep: "test", "validate", "train" (or any value of our CSV's ``split`` column),
        or "all" for no filter. Default (None): "test" where the dataset says which rows are test
        data (MIMIC-CXR: ``mimic-cxr-2.0.0-split.csv[.gz]`` next to the label CSV or under
        ``images_root``; our CSV: a ``split`` column), else "all". CheXpert and OpenI have no split
        information (the file is the split).

    Returns
    -------
    Manifest
        The usable cases and the skipped rows with reasons.

    Raises
    ------
    ManifestError
        The file is missing, the layout is unknown or cannot be detected, a required column is
        missing, a split is asked for and the dataset has no split information or no row in that
        split, or not one row is usable.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise ManifestError(f"unknown manifest layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist; pass the CSV or XML file (or a folder of XML)")
    if split is not None:
        split = split.strip().lower()
        if not split:
            raise ManifestError("the split is empty; pass --split test (or validate, train, all)")
    root = Path(images_root) if images_root is not None else None
    if layout == "auto":
        layout = _detect_layout(path)
    if layout in ("openi", "chexpert") and split not in (None, ALL_SPLITS):
        raise ManifestError(
            f"--split {split}: the {layout} layout has no split information (the file you pass is the "
            "split, e.g. CheXpert's valid.csv); drop --split or pass --split all")
    if layout == "openi":
        manifest = read_openi(path, root, labeler)
    else:
        header, rows = cells.read_csv(path)
        if layout == "csv":
            manifest = _read_ours(path, header, rows, root, labeler, split)
        elif layout == "chexpert":
            manifest = read_chexpert(path, header, rows, root)
        else:
            manifest = read_mimic(path, header, rows, root, split)
    if not manifest.cases:
        reasons = "; ".join(f"row {s.row}: {s.reason}" for s in manifest.skipped[:3]) or "it has no rows"
        raise ManifestError(f"manifest {path} ({manifest.layout} layout) has no usable case: {reasons}")
    return manifest


def select_cases(cases: Iterable[Case], *, min_age: int | None = None, max_age: int | None = None,
                 limit: int | None = None) -> tuple[Case, ...]:
    """Cases whose age is within [min_age, max_age] (unknown age excluded when filtering), first ``limit``."""
    out = []
    for case in cases:
        if min_age is not None or max_age is not None:
            age = case.context.age_years
            if age is None or (min_age is not None and age < min_age) or (max_age is not None and age > max_age):
                continue
        out.append(case)
        if limit is not None and len(out) >= limit:
            break
    return tuple(out)


# --- layouts ------------------------------------------------------------------------------------

def _detect_layout(path: Path) -> str:
    if path.is_dir() or path.suffix.lower() == ".xml":
        return "openi"
    header, _ = cells.read_csv(path, header_only=True)
    names = set(header)
    if "subject_id" in names and "study_id" in names and "path" not in {cells.norm(h) for h in header}:
        return "mimic"
    if names & CHEXPERT_ONLY or "Path" in names:
        return "chexpert"
    if "path" in {cells.norm(h) for h in header}:
        return "csv"
    raise ManifestError(
        f"cannot tell the layout of {path}: its header ({', '.join(header[:8])}) has no `path` column "
        "(our CSV), no `Path` and CheXpert label columns (CheXpert), no subject_id/study_id (MIMIC-CXR); "
        "add a `path` column or pass --layout")


# --- our CSV layout -----------------------------------------------------------------------------

def _read_ours(path: Path, header: list[str], rows: list[dict[str, str]], root: Path | None,
               labeler, split: str | None) -> Manifest:
    by_norm = {cells.norm(h): h for h in header}
    if "path" not in by_norm:
        raise ManifestError(f"manifest {path} has no `path` column; columns: {', '.join(header)}")
    finding_cols = {name: by_norm[name] for name in FINDING_NAMES if name in by_norm}
    report_col = by_norm.get("report") or by_norm.get("reference_report")
    if not finding_cols and not report_col:
        raise ManifestError(
            f"manifest {path} has neither finding columns ({', '.join(FINDING_NAMES[:6])}, ...) nor a "
            "`report` column to label; add one of them")
    bases = [root] if root is not None else [path.parent]
    id_col = by_norm.get("id") or by_norm.get("case_id")
    split_col = by_norm.get("split")
    want = split if split is not None else ("test" if split_col else ALL_SPLITS)
    if want != ALL_SPLITS:
        if split_col is None:
            raise ManifestError(f"--split {want}: manifest {path} has no `split` column; add one "
                                "(train/validate/test) or pass --split all")
        values = [r.get(split_col, "").strip().lower() for r in rows]
        if want not in values:
            raise ManifestError(f"no row of manifest {path} is in the {want!r} split (its `split` column "
                                f"holds: {cells.split_values(values)}); pass --split with one of them, or --split all")
    cases, skipped, excluded = [], [], 0
    first_row: dict[str, int] = {}
    for i, r in enumerate(rows, start=1):
        if want != ALL_SPLITS and r.get(split_col, "").strip().lower() != want:
            excluded += 1
            continue
        # never the path itself as the id: site exports put MRNs / accessions in paths
        case_id = (r.get(id_col, "") if id_col else "") or (
            path_case_id(r[by_norm["path"]], bases) if r[by_norm["path"]] else None)
        try:
            if case_id in first_row:
                raise ValueError(f"case id {case_id} repeats row {first_row[case_id]}"
                                 + ("" if id_col and r.get(id_col) else " (the same image path)"))
            if not r[by_norm["path"]]:
                raise ValueError("the `path` cell is empty")
            report = r.get(report_col, "") if report_col else ""
            if finding_cols:
                labels = {}
                for name, col in finding_cols.items():
                    lab = cells.label(r.get(col, ""), col)
                    if lab is not None:
                        labels[name] = lab
            else:
                if not report:
                    raise ValueError("no finding columns and the `report` cell is empty")
                labels = cells.labels_from_report(report, labeler)
            context = cells.context(r.get(by_norm.get("age", ""), ""), r.get(by_norm.get("sex", ""), ""),
                                    r.get(by_norm.get("indication", ""), "") or r.get(by_norm.get("reason", ""), ""))
            abnormal = cells.label(r[by_norm["abnormal"]], by_norm["abnormal"]) if "abnormal" in by_norm else None
        except ValueError as exc:
            skipped.append(Skipped(i, case_id, str(exc)))
            continue
        first_row[case_id] = i
        cases.append(Case(case_id=case_id, row=i, path=cells.resolve(r[by_norm["path"]], bases), labels=labels,
                          context=context, reference_report=report or None, abnormal=abnormal))
    return Manifest(path, "csv", tuple(cases), tuple(skipped), split=want,
                    split_source="split column" if want != ALL_SPLITS else None, split_excluded=excluded)


__all__ = ["Case", "Label", "Manifest", "Skipped", "LAYOUTS", "CHEXPERT_COLUMNS", "ALL_SPLITS", "read_manifest",
           "select_cases", "load_image", "path_case_id"]
