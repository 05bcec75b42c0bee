"""MIMIC-CXR(-JPG): the CheXpert label CSV per study, the metadata CSV for images, the official split."""
from __future__ import annotations

from pathlib import Path

from evaluation.cases import ALL_SPLITS, Case, Manifest, Skipped
from evaluation.errors import ManifestError
from evaluation.layouts import cells
from evaluation.layouts.chexpert import chexpert_labels

MIMIC_SPLIT_FILES = ("mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-split.csv.gz")
MIMIC_METADATA_FILES = ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-metadata.csv.gz")


def read_mimic(path: Path, header: list[str], rows: list[dict[str, str]], root: Path | None,
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
        split_header, split_rows = cells.read_csv(split_path)
        if not {"study_id", "split"} <= set(split_header):
            raise ManifestError(f"MIMIC-CXR split file {split_path.name} needs study_id and split columns; "
                                f"it has {', '.join(split_header)}")
        in_split = {s["study_id"] for s in split_rows if s["split"].lower() == want}
        if not in_split:
            raise ManifestError(f"no study of {split_path.name} is in the {want!r} split (its splits: "
                                f"{cells.split_values(s['split'].lower() for s in split_rows)}); pass one of them "
                                "or --split all")
    meta_path = next((d / n for d in (path.parent, base) for n in MIMIC_METADATA_FILES if (d / n).is_file()), None)
    if meta_path is None:
        raise ManifestError(
            f"MIMIC-CXR labels {path} need mimic-cxr-2.0.0-metadata.csv(.gz) next to them or under "
            f"{base} to find each study's frontal image; or add a `path` column and use --layout csv")
    _, meta = cells.read_csv(meta_path)
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
            labels = chexpert_labels(r)
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
