"""Labelled datasets: our CSV manifest, the CheXpert / MIMIC-CXR label CSVs, Indiana/OpenI report XML.

Every reader returns a `Manifest`: the cases it could use and the rows it had to skip, with the
reason. A bad row never stops the read; a file that cannot be a manifest at all raises
`ManifestError`. Labels follow the CheXpert convention: 1/present, 0/absent, -1/uncertain, and a
blank cell means "not mentioned", which counts as absent (how the paper's labels were made).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Callable, Iterable, Literal

import numpy as np

from evaluation.errors import ManifestError, UnreadableImage
from prompts.context import ClinicalContext
from prompts.findings import FINDING_NAMES

Label = Literal["present", "absent", "uncertain"]
Layout = Literal["auto", "csv", "chexpert", "mimic", "openi"]
LAYOUTS: tuple[str, ...] = ("auto", "csv", "chexpert", "mimic", "openi")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
ALL_SPLITS = "all"
MIMIC_SPLIT_FILES = ("mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-split.csv.gz")

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
_CHEXPERT_ONLY = {"Lung Lesion", "No Finding", "Enlarged Cardiomediastinum", "Pleural Other"}

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
        manifest = _read_openi(path, root, labeler)
    else:
        header, rows = _read_csv(path)
        if layout == "csv":
            manifest = _read_ours(path, header, rows, root, labeler, split)
        elif layout == "chexpert":
            manifest = _read_chexpert(path, header, rows, root)
        else:
            manifest = _read_mimic(path, header, rows, root, split)
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


def load_image(path: str | Path) -> np.ndarray:
    """Read one image as the model takes it.

    DICOM goes through ``imaging.read_radiograph`` (modality/VOI LUT, MONOCHROME1 inversion);
    PNG/JPEG through Pillow, converted to 8-bit grayscale (16-bit PNG scaled by its maximum).

    Returns
    -------
    numpy.ndarray
        (H, W) uint8, MONOCHROME2.

    Raises
    ------
    UnreadableImage
        Missing file, unknown format, or a decoder error (the message carries the cause).
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(f"image {path.name} not found")
    try:
        if _is_dicom(path):
            from imaging import read_radiograph  # lazy: pydicom is only needed for DICOM rows

            return np.ascontiguousarray(read_radiograph(path).pixels)
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img.load()
                if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    a = np.asarray(img, dtype=np.float64)       # (H, W) 16-bit or float
                    top = a.max()
                    a = a / top * 255.0 if top > 0 else a
                    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
                return np.asarray(img.convert("L"), dtype=np.uint8)   # (H, W) uint8
        except UnidentifiedImageError as exc:
            raise UnreadableImage(
                f"image {path.name} is neither DICOM nor an image Pillow can read "
                f"(PNG, JPEG): {_without_folders(str(exc), path)}") from exc
    except (UnreadableImage, ImportError):
        raise              # a missing package is the installation's problem, not this row's
    except Exception as exc:  # any decoder failure is a row problem, never a crash of the run
        code = getattr(exc, "code", type(exc).__name__)
        raise UnreadableImage(f"image {path.name} could not be decoded ({code}): "
                              f"{_without_folders(str(exc), path)}") from exc


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


def _without_folders(message: str, path: Path) -> str:
    """A decoder's message with the image's folders cut out (they may hold MRNs / accessions)."""
    spellings = {str(path), str(path.absolute()), str(path.resolve())}
    for s in sorted(spellings, key=len, reverse=True):
        message = message.replace(s, path.name)
    # whole folder paths only ("/a/MRN123"), never a bare "/" or a word like "images" in the text
    folders = {f for f in (str(path.parent), str(path.parent.absolute()), str(path.parent.resolve()))
               if len(f) > 1 and ("/" in f or "\\" in f)}
    for s in sorted(folders, key=len, reverse=True):
        message = message.replace(s, "<folder>")
    return message


# --- layouts ------------------------------------------------------------------------------------

def _detect_layout(path: Path) -> str:
    if path.is_dir() or path.suffix.lower() == ".xml":
        return "openi"
    header, _ = _read_csv(path, header_only=True)
    names = set(header)
    if "subject_id" in names and "study_id" in names and "path" not in {_norm(h) for h in header}:
        return "mimic"
    if names & _CHEXPERT_ONLY or "Path" in names:
        return "chexpert"
    if "path" in {_norm(h) for h in header}:
        return "csv"
    raise ManifestError(
        f"cannot tell the layout of {path}: its header ({', '.join(header[:8])}) has no `path` column "
        "(our CSV), no `Path` and CheXpert label columns (CheXpert), no subject_id/study_id (MIMIC-CXR); "
        "add a `path` column or pass --layout")


def _read_csv(path: Path, header_only: bool = False) -> tuple[list[str], list[dict[str, str]]]:
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


def _norm(column: str) -> str:
    return re.sub(r"[\s\-/]+", "_", column.strip().lower())


def _label(value: str, column: str) -> Label | None:
    key = value.strip().lower()
    if key not in _LABEL_VALUES:
        raise ValueError(f"column {column!r} holds {value!r}; use present/absent/uncertain, "
                         "1/0/-1 or blank (not mentioned), or NA for not labelled")
    return _LABEL_VALUES[key]


def _context(age: str, sex: str, indication: str) -> ClinicalContext:
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


def _resolve(value: str, bases: list[Path]) -> Path:
    p = Path(value)
    if p.is_absolute():
        return p
    candidates = [base / p for base in bases]
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def _labels_from_report(text: str, labeler: Callable[[str], object] | None) -> dict[str, Label]:
    if labeler is None:
        from prompts import extract_findings as labeler
    findings = labeler(text)
    return {f.name: ("absent" if f.presence == "not_mentioned" else f.presence) for f in findings}


def _split_values(values: Iterable[str]) -> str:
    seen = sorted({v for v in values if v})
    return ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "") if seen else "none"


def _read_ours(path: Path, header: list[str], rows: list[dict[str, str]], root: Path | None,
               labeler, split: str | None) -> Manifest:
    by_norm = {_norm(h): h for h in header}
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
                                f"holds: {_split_values(values)}); pass --split with one of them, or --split all")
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
                    lab = _label(r.get(col, ""), col)
                    if lab is not None:
                        labels[name] = lab
            else:
                if not report:
                    raise ValueError("no finding columns and the `report` cell is empty")
                labels = _labels_from_report(report, labeler)
            context = _context(r.get(by_norm.get("age", ""), ""), r.get(by_norm.get("sex", ""), ""),
                               r.get(by_norm.get("indication", ""), "") or r.get(by_norm.get("reason", ""), ""))
            abnormal = _label(r[by_norm["abnormal"]], by_norm["abnormal"]) if "abnormal" in by_norm else None
        except ValueError as exc:
            skipped.append(Skipped(i, case_id, str(exc)))
            continue
        first_row[case_id] = i
        cases.append(Case(case_id=case_id, row=i, path=_resolve(r[by_norm["path"]], bases), labels=labels,
                          context=context, reference_report=report or None, abnormal=abnormal))
    return Manifest(path, "csv", tuple(cases), tuple(skipped), split=want,
                    split_source="split column" if want != ALL_SPLITS else None, split_excluded=excluded)


def _chexpert_labels(r: dict[str, str]) -> dict[str, Label]:
    labels = {}
    for col, name in CHEXPERT_COLUMNS.items():
        if col in r:
            lab = _label(r[col], col)
            if lab is not None:
                labels[name] = lab
    return labels


def _read_chexpert(path: Path, header: list[str], rows: list[dict[str, str]], root: Path | None) -> Manifest:
    path_col = "Path" if "Path" in header else next((h for h in header if _norm(h) == "path"), None)
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
        case_id = path_case_id(cell, bases) if cell else None
        if r.get("Frontal/Lateral", "").lower() == "lateral":
            skipped.append(Skipped(i, case_id, "lateral view (only frontal images are evaluated)"))
            continue
        try:
            if not cell:
                raise ValueError("the `Path` cell is empty")
            labels = _chexpert_labels(r)
            context = _context(r.get("Age", ""), r.get("Sex", ""), "")
        except ValueError as exc:
            skipped.append(Skipped(i, case_id, str(exc)))
            continue
        cases.append(Case(case_id=case_id, row=i, path=_resolve(cell, bases), labels=labels, context=context))
    return Manifest(path, "chexpert", tuple(cases), tuple(skipped))


def _read_mimic(path: Path, header: list[str], rows: list[dict[str, str]], root: Path | None,
                split: str | None) -> Manifest:
    """MIMIC-CXR(-JPG): labels per study; the frontal image comes from the metadata CSV.

    Image path: ``files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg`` (or ``.dcm``)
    under ``images_root`` (default: the label CSV's folder). Studies outside ``split`` (default
    "test" when the official split file is found) are left out before anything else.
    """
    base = root if root is not None else path.parent
    split_path = next((d / n for d in (path.parent, base) for n in MIMIC_SPLIT_FILES if (d / n).is_file()), None)
    want = split if split is not None else ("test" if split_path is not None else ALL_SPLITS)
    in_split: set[str] | None = None
    if want != ALL_SPLITS:
        if split_path is None:
            raise ManifestError(
                f"--split {want} needs mimic-cxr-2.0.0-split.csv(.gz) (distributed with MIMIC-CXR-JPG, beside "
                f"the label CSV) next to {path.name} or under {base}; without it pass --split all, which "
                "scores every study, most of them the model's training data (not comparable with the "
                "paper's test-set F1)")
        split_header, split_rows = _read_csv(split_path)
        if not {"study_id", "split"} <= set(split_header):
            raise ManifestError(f"MIMIC-CXR split file {split_path.name} needs study_id and split columns; "
                                f"it has {', '.join(split_header)}")
        in_split = {s["study_id"] for s in split_rows if s["split"].lower() == want}
        if not in_split:
            raise ManifestError(f"no study of {split_path.name} is in the {want!r} split (its splits: "
                                f"{_split_values(s['split'].lower() for s in split_rows)}); pass one of them "
                                "or --split all")
    meta_path = next((d / n for d in (path.parent, base) for n in
                      ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-metadata.csv.gz")
                      if (d / n).is_file()), None)
    if meta_path is None:
        raise ManifestError(
            f"MIMIC-CXR labels {path} need mimic-cxr-2.0.0-metadata.csv(.gz) next to them or under "
            f"{base} to find each study's frontal image; or add a `path` column and use --layout csv")
    _, meta = _read_csv(meta_path)
    # per study: the frontal image, PA preferred over AP (the paper evaluated frontal views)
    rank = {"PA": 0, "AP": 1}
    frontal: dict[str, tuple[int, str, str]] = {}
    for m in meta:
        view = m.get("ViewPosition", "").upper()
        if view not in rank:
            continue
        study = m.get("study_id", "")
        best = frontal.get(study)
        if best is None or rank[view] < best[0]:
            frontal[study] = (rank[view], m.get("dicom_id", ""), m.get("subject_id", ""))
    cases, skipped, excluded = [], [], 0
    for i, r in enumerate(rows, start=1):
        study, subject = r.get("study_id", ""), r.get("subject_id", "")
        case_id = f"s{study}"
        if in_split is not None and study not in in_split:
            excluded += 1
            continue
        if study not in frontal:
            skipped.append(Skipped(i, case_id, "no PA/AP image for this study in the metadata CSV"))
            continue
        try:
            labels = _chexpert_labels(r)
        except ValueError as exc:
            skipped.append(Skipped(i, case_id, str(exc)))
            continue
        _, dicom_id, _ = frontal[study]
        folder = base / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        image = folder / f"{dicom_id}.jpg"
        if not image.exists() and (folder / f"{dicom_id}.dcm").exists():
            image = folder / f"{dicom_id}.dcm"
        cases.append(Case(case_id=case_id, row=i, path=image, labels=labels))
    return Manifest(path, "mimic", tuple(cases), tuple(skipped), split=want,
                    split_source=split_path.name if in_split is not None else None, split_excluded=excluded)


def _read_openi(path: Path, root: Path | None, labeler) -> Manifest:
    files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
    if not files:
        raise ManifestError(f"folder {path} holds no .xml report (Indiana/OpenI layout: one XML per report)")
    xml_dir = path if path.is_dir() else path.parent
    bases = [root] if root is not None else [xml_dir, xml_dir.parent, xml_dir / "images", xml_dir.parent / "images"]
    cases, skipped = [], []
    for i, f in enumerate(files, start=1):
        try:
            tree = ET.parse(f).getroot()
        except ET.ParseError as exc:
            skipped.append(Skipped(i, f.stem, f"not well-formed XML: {exc}"))
            continue
        uid = tree.find(".//uId")
        case_id = uid.get("id") if uid is not None and uid.get("id") else f.stem
        sections = {(el.get("Label") or "").strip().upper(): " ".join((el.text or "").split())
                    for el in tree.iter("AbstractText")}
        findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
        if not findings and not impression:
            skipped.append(Skipped(i, case_id, "the report has no FINDINGS or IMPRESSION text"))
            continue
        image_id = _openi_frontal(tree)
        if image_id is None:
            skipped.append(Skipped(i, case_id, "no frontal parentImage in the report"))
            continue
        text = "\n".join(part for part in (f"FINDINGS: {findings}" if findings else "",
                                           f"IMPRESSION: {impression}" if impression else "") if part)
        labels = _labels_from_report(text, labeler)
        context = ClinicalContext(reason=sections.get("INDICATION") or None)
        cases.append(Case(case_id=case_id, row=i, path=_find_image(image_id, bases), labels=labels,
                          context=context, reference_report=text))
    return Manifest(path, "openi", tuple(cases), tuple(skipped))


def _openi_frontal(tree: ET.Element) -> str | None:
    """The first parentImage whose caption is not a lateral view (no caption: taken as frontal)."""
    for img in tree.iter("parentImage"):
        caption = " ".join(el.text or "" for el in img.iter("caption")).lower()
        if "lateral" in caption and not re.search(r"\b(pa|ap|frontal)\b", caption):
            continue
        if img.get("id"):
            return img.get("id")
    return None


def _find_image(image_id: str, bases: list[Path]) -> Path:
    for base in bases:
        for suffix in IMAGE_SUFFIXES:
            candidate = base / f"{image_id}{suffix}"
            if candidate.is_file():
                return candidate
    return bases[0] / f"{image_id}.png"


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


__all__ = ["Case", "Label", "Manifest", "Skipped", "LAYOUTS", "CHEXPERT_COLUMNS", "ALL_SPLITS", "read_manifest",
           "select_cases", "load_image", "path_case_id"]
