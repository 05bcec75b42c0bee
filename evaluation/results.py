"""From per_image.csv rows and the manifest's labels to results.json: every run's metrics."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Mapping, Sequence

import numpy as np

from evaluation import metrics as M
from evaluation.manifest import Case, Manifest
from evaluation.plan import SCORE_PROMPTS, Plan, context_variant
from prompts.findings import FINDING_NAMES, PRIMARY_FINDINGS

SCHEMA = "cxr-cds.evaluation.v1"
ABNORMAL = "abnormal"
# Findings that make an image abnormal (normal-vs-abnormal): every pathology, not devices.
PATHOLOGIES: tuple[str, ...] = tuple(n for n in FINDING_NAMES if n not in ("support_devices", "no_acute_finding"))

PUBLISHED = {
    "source": "CXR-LLAVA, arXiv 2310.18341 and European Radiology (2025)",
    "protocol": "labels extracted from reports with the CheXpert labeler; uncertain labels excluded",
    "average_f1": [
        {"dataset": "MIMIC-CXR internal test set", "findings": 6, "value": 0.81, "version": "arXiv and journal"},
        {"dataset": "Indiana/OpenI external test set", "findings": 7, "value": 0.62, "version": "arXiv v3"},
        {"dataset": "Indiana/OpenI external test set", "findings": 6, "value": 0.56, "version": "journal"},
    ],
    "acceptable_for_autonomous_reporting": {"model": 0.727, "original_reports": 0.840,
                                            "dataset": "Indiana/OpenI external, radiologist review"},
}


def summarize(manifest: Manifest, cases: Sequence[Case], rows: Mapping[tuple, Mapping[str, str]], plan: Plan,
              identity: Mapping[str, object], *, unreadable: Sequence[dict] = (), generated: int = 0,
              reused: int = 0, relabelled: int = 0) -> dict:
    """results.json: dataset, model, plan, and per run (prompt x temperature x top_p) the metrics.

    Per run and per uncertain-label policy (exclude = the paper's protocol, positive, negative):
    per-finding sensitivity/specificity/PPV/NPV/F1/accuracy with bootstrap CIs, macro and micro
    over the six primary findings, and normal-vs-abnormal as the ``abnormal`` column. Report runs
    with repeats add agreement across repeats; the question prompt adds ROC AUC and thresholds.
    """
    columns = [n for n in FINDING_NAMES if n in manifest.findings] + [ABNORMAL]
    primary = [n for n in PRIMARY_FINDINGS if n in columns]
    explicit_abnormal = any(c.abnormal is not None for c in cases)
    labelled_pathologies = [n for n in PATHOLOGIES if n in columns]
    by_case = {c.case_id: i for i, c in enumerate(cases)}

    # truth: (n_cases, n_cols) codes, before any policy
    truth = np.full((len(cases), len(columns)), M.UNKNOWN, dtype=np.int8)
    for i, case in enumerate(cases):
        for j, name in enumerate(columns[:-1]):
            truth[i, j] = M.code(case.labels.get(name))
    derived = M.abnormal_codes(truth[:, :-1], columns[:-1], labelled_pathologies)
    truth[:, -1] = [M.code(c.abnormal) if c.abnormal is not None else derived[i] for i, c in enumerate(cases)]

    groups: dict[tuple[str, str, str], list[Mapping[str, str]]] = {}
    for row in rows.values():
        groups.setdefault((row["prompt"], row["temperature"], row["top_p"]), []).append(row)

    runs = []
    for prompt in plan.prompts:
        for (g_prompt, t, p), g_rows in groups.items():
            if g_prompt != prompt:
                continue
            runs.append(_run(g_prompt, t, p, g_rows, truth, columns, primary, by_case, plan,
                             PATHOLOGIES if explicit_abnormal else labelled_pathologies))
    runs.sort(key=lambda r: (plan.prompts.index(r["prompt"]), r["temperature"] or 0.0, r["top_p"] or 0.0))
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "Research evaluation of AI-generated draft reports; not a validation for clinical use on its own.",
        "dataset": {
            "manifest": str(manifest.source), "layout": manifest.layout,
            "cases_in_manifest": len(manifest.cases), "cases_selected": len(cases),
            "cases_evaluated": len({r["case_id"] for r in rows.values()}),
            "findings": columns[:-1], "primary_findings": primary,
            "split": {"kept": manifest.split, "source": manifest.split_source,
                      "rows_outside_split": manifest.split_excluded},
            "filters": {"min_age": plan.min_age, "max_age": plan.max_age, "limit": plan.limit},
            "skipped_rows": [s.to_json() for s in manifest.skipped],
            "unreadable": list(unreadable),
        },
        "model": dict(identity),
        "plan": plan.to_json(),
        "work": {"model_calls_now": generated, "reused_from_per_image_csv": reused,
                 "labels_changed_on_reuse": relabelled},
        "runs": runs,
        "published": PUBLISHED,
    }


def _run(prompt: str, t: str, p: str, rows: Sequence[Mapping[str, str]], truth: np.ndarray,
         columns: list[str], primary: list[str], by_case: Mapping[str, int], plan: Plan,
         pathologies: Sequence[str]) -> dict:
    repeats = max(int(r["repeat"]) for r in rows) + 1
    # pred: (n_cases, n_repeats, all FINDING_NAMES) codes, UNKNOWN where nothing was generated
    pred_all = np.full((truth.shape[0], repeats, len(FINDING_NAMES)), M.UNKNOWN, dtype=np.int8)
    scores = np.full((truth.shape[0], len(PRIMARY_FINDINGS)), np.nan)
    for r in rows:
        i, k = by_case.get(r["case_id"]), int(r["repeat"])
        if i is None:
            continue
        for j, name in enumerate(FINDING_NAMES):
            v = r.get(f"pred_{name}", "")
            pred_all[i, k, j] = M.code(v) if v else M.UNKNOWN
        for j, name in enumerate(PRIMARY_FINDINGS):
            v = r.get(f"score_{name}", "")
            scores[i, j] = float(v) if v else np.nan
    evaluated = (pred_all != M.UNKNOWN).any(axis=(1, 2))             # (n_cases,) cases with output
    idx = [FINDING_NAMES.index(n) for n in columns[:-1]]
    if prompt in SCORE_PROMPTS:
        # no model answer for the non-primary findings or the abnormal flag: thresholded scores only
        pred_abn = M.abnormal_codes(pred_all, list(FINDING_NAMES), [n for n in PRIMARY_FINDINGS if n in pathologies])
    else:
        pred_abn = M.abnormal_codes(pred_all, list(FINDING_NAMES), pathologies)
    pred = np.concatenate([pred_all[..., idx], pred_abn[..., None]], axis=-1)  # (n, r, n_cols)
    tr, pr = truth[evaluated], pred[evaluated]

    out = {"prompt": prompt, "context": context_variant(prompt),
           "temperature": float(t) if t else None, "top_p": float(p) if p else None,
           "repeats": repeats, "cases": int(evaluated.sum()), "generations": len(rows),
           # reports that stopped at the token cap: their labels come from an unfinished text
           "truncated_at_cap": sum(1 for r in rows if r.get("finish_reason") == "length"),
           "metrics": {}}
    for policy in M.POLICIES:
        out["metrics"][policy] = M.confusion_metrics(
            M.apply_policy(tr, policy), M.apply_policy(pr, policy), columns,
            average_over=primary, n_boot=plan.bootstrap, seed=plan.seed)
    if repeats > 1:
        out["agreement"] = M.agreement(pr, columns)
        # the paper's output variance: macro F1 of each repeat on its own (exclude policy)
        per_repeat = [M.confusion_metrics(M.apply_policy(tr, "exclude"), M.apply_policy(pr[:, k:k + 1], "exclude"),
                                          columns, average_over=primary, n_boot=0)["macro"]["f1"]["value"]
                      for k in range(repeats)]
        vals = [v for v in per_repeat if v is not None]
        out["macro_f1_by_repeat"] = {"values": per_repeat,
                                     "mean": float(np.mean(vals)) if vals else None,
                                     "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None}
    if prompt in SCORE_PROMPTS:
        s = scores[evaluated]
        score_cols = [n for n in PRIMARY_FINDINGS if n in columns]
        s_cols = s[:, [PRIMARY_FINDINGS.index(n) for n in score_cols]]
        # abnormality score = the highest finding probability; NaN when the image has no score
        top = np.where(np.isnan(s), -np.inf, s).max(axis=1, initial=-np.inf)
        abn_score = np.where(np.isinf(top), np.nan, top)[:, None]
        cols = score_cols + [columns[-1]]
        t_idx = [columns.index(n) for n in cols]
        out["scores"] = M.score_metrics(M.apply_policy(tr[:, t_idx], "exclude"),
                                        np.concatenate([s_cols, abn_score], axis=1), cols,
                                        n_boot=plan.bootstrap, seed=plan.seed)
    return out
