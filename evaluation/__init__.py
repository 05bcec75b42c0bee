"""Evaluation harness: reproduce the paper's experiments on a site's own labelled data.

`evaluate(dataset, reader, plan, out_dir)` reads a labelled manifest (our CSV, CheXpert/MIMIC-CXR
label CSVs, Indiana/OpenI XML), runs the model through a `Reader` (cached in per_image.csv, so a
resumed run recomputes nothing), and writes results.json and a self-contained report.html.
"""
from evaluation.errors import EvaluationError, ManifestError, PlanError, UnreadableImage
from evaluation.harness import REPORT, RESULTS, evaluate
from evaluation.manifest import (CHEXPERT_COLUMNS, LAYOUTS, Case, Manifest, Skipped, load_image, read_manifest,
                                 select_cases)
from evaluation.plan import EVALUATION_PROMPTS, PRESETS, Plan, generation_seed, make_plan
from evaluation.reader import BackendReader, EngineReader, Reader, Reading, ReadRequest, Sampling, open_reader
from evaluation.report import render_html
from evaluation.results import PUBLISHED, summarize
from evaluation.runner import PER_IMAGE, run

__all__ = [
    "EvaluationError", "ManifestError", "PlanError", "UnreadableImage",
    "evaluate", "RESULTS", "REPORT", "PER_IMAGE",
    "Case", "Manifest", "Skipped", "LAYOUTS", "CHEXPERT_COLUMNS", "read_manifest", "select_cases", "load_image",
    "Plan", "PRESETS", "EVALUATION_PROMPTS", "make_plan", "generation_seed",
    "Reader", "ReadRequest", "Reading", "Sampling", "BackendReader", "EngineReader", "open_reader",
    "summarize", "PUBLISHED", "render_html", "run",
]
