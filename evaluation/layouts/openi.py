"""Indiana University / OpenI report XML: one file per report, labels from its FINDINGS and IMPRESSION."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from evaluation.cases import Case, Manifest, Skipped
from evaluation.errors import ManifestError
from evaluation.images import IMAGE_SUFFIXES
from evaluation.layouts import cells
from prompts.context import ClinicalContext


def read_openi(path: Path, root: Path | None, labeler) -> Manifest:
    """One XML report or a folder of them; the labeler labels each report's text."""
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
        labels = cells.labels_from_report(text, labeler)
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
