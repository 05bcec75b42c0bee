"""The whole evaluation, top to bottom: manifest -> cases -> generations (cached) -> metrics -> files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TextIO

from evaluation.manifest import Manifest, read_manifest, select_cases
from evaluation.plan import Plan
from evaluation.reader import Reader
from evaluation.report import render_html
from evaluation.results import summarize
from evaluation.runner import run

RESULTS = "results.json"
REPORT = "report.html"


def evaluate(dataset: str | Path | Manifest, reader: Reader, plan: Plan, out_dir: str | Path, *, layout: str = "auto",
             images_root: str | Path | None = None, labeler: Callable[[str], object] | None = None,
             split: str | None = None, batch_size: int = 8, workers: int = 2,
             progress: TextIO | None = None) -> dict:
    """Run one evaluation and write ``results.json``, ``per_image.csv`` and ``report.html`` to ``out_dir``.

    Parameters
    ----------
    dataset
        Manifest path (see ``read_manifest``) or an already read Manifest.
    reader
        The model (``open_reader(...)``) or any object with the Reader protocol.
    plan
        What to run (``make_plan``).
    out_dir
        Output folder; an existing ``per_image.csv`` there is reused (resume).
    layout, images_root, labeler, split
        Passed to ``read_manifest`` (labeler also reads the generated reports, cached ones included).
    batch_size, workers, progress
        Images per model call, decoding threads, progress stream (stderr by default).

    Returns
    -------
    dict
        The content of results.json.

    Raises
    ------
    ManifestError
        The manifest cannot be read or has no usable case (unreadable images do not raise:
        they are listed under ``dataset.unreadable``).
    """
    out_dir = Path(out_dir)
    manifest = dataset if isinstance(dataset, Manifest) else read_manifest(
        dataset, layout=layout, images_root=images_root, labeler=labeler, split=split)
    cases = select_cases(manifest.cases, min_age=plan.min_age, max_age=plan.max_age, limit=plan.limit)
    rows, log = run(cases, reader, plan, out_dir, labeler=labeler, batch_size=batch_size, workers=workers,
                    progress=progress)
    results = summarize(manifest, cases, rows, plan, reader.identity, unreadable=log.unreadable,
                        generated=log.generated, reused=log.reused, relabelled=log.relabelled)
    (out_dir / RESULTS).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out_dir / REPORT).write_text(render_html(results), encoding="utf-8")
    return results
