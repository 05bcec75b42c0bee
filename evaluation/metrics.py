"""Metrics, numpy only: confusion counts, sensitivity/specificity/PPV/NPV/F1 with cluster-bootstrap
CIs, macro and micro averages, ROC AUC and threshold tables, agreement across repeats.

Labels are coded as small integers so whole runs are plain arrays:
PRESENT = 1, ABSENT = 0, UNCERTAIN = -1, UNKNOWN = -2 (not labelled / not generated).
Truth arrays are (n_cases, n_columns); prediction arrays (n_cases, n_repeats, n_columns).
The bootstrap resamples *cases* (all repeats of a case move together), seeded.
An undefined metric (0/0) is None in every output, never 0.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

PRESENT, ABSENT, UNCERTAIN, UNKNOWN = 1, 0, -1, -2
CODES = {"present": PRESENT, "absent": ABSENT, "uncertain": UNCERTAIN, "not_mentioned": ABSENT}
POLICIES: tuple[str, ...] = ("exclude", "positive", "negative")
METRICS: tuple[str, ...] = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))


def code(label: str | None) -> int:
    """present/absent/uncertain/not_mentioned/None -> the integer code (not_mentioned counts as absent)."""
    return UNKNOWN if label is None else CODES[label]


def apply_policy(codes: np.ndarray, policy: str) -> np.ndarray:
    """Map uncertain labels by the protocol: "exclude" -> UNKNOWN, "positive" -> 1, "negative" -> 0."""
    if policy not in POLICIES:
        raise ValueError(f"unknown uncertain-label policy {policy!r}; choose one of {', '.join(POLICIES)}")
    out = np.array(codes, dtype=np.int8, copy=True)
    out[out == UNCERTAIN] = {"exclude": UNKNOWN, "positive": PRESENT, "negative": ABSENT}[policy]
    return out


def case_counts(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-case confusion counts after the policy is applied.

    Parameters
    ----------
    truth
        (n_cases, n_cols) int codes in {1, 0, UNKNOWN}.
    pred
        (n_cases, n_repeats, n_cols) int codes in {1, 0, UNKNOWN}.

    Returns
    -------
    numpy.ndarray
        (n_cases, n_cols, 4) int64 counts in the order TP, FP, FN, TN; a pair counts only when
        both the truth and the prediction are known.
    """
    t = truth[:, None, :]                                   # (n, 1, c) broadcast over repeats
    known = (t != UNKNOWN) & (pred != UNKNOWN)              # (n, r, c)
    tp = (known & (t == 1) & (pred == 1)).sum(axis=1)
    fp = (known & (t == 0) & (pred == 1)).sum(axis=1)
    fn = (known & (t == 1) & (pred == 0)).sum(axis=1)
    tn = (known & (t == 0) & (pred == 0)).sum(axis=1)
    return np.stack([tp, fp, fn, tn], axis=-1).astype(np.int64)


def rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from counts (..., 4) [TP, FP, FN, TN]; NaN where the denominator is 0."""
    c = np.asarray(counts, dtype=np.float64)
    tp, fp, fn, tn = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
            "ppv": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "npv": np.where(tn + fn > 0, tn / (tn + fn), np.nan),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan),
            "accuracy": np.where(c.sum(axis=-1) > 0, (tp + tn) / c.sum(axis=-1), np.nan),
        }


def bootstrap_weights(n_cases: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_cases) multiplicities of each case in each bootstrap resample (seeded)."""
    rng = np.random.default_rng(seed)
    if n_cases == 0:
        return np.zeros((n_boot, 0), dtype=np.int64)
    return rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=n_boot)


def confusion_metrics(truth: np.ndarray, pred: np.ndarray, columns: Sequence[str], *,
                      average_over: Sequence[str], n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Per-column metrics with bootstrap CIs, and macro/micro averages over ``average_over``.

    Parameters
    ----------
    truth, pred
        Coded labels, the uncertain policy already applied: (n_cases, n_cols) and
        (n_cases, n_repeats, n_cols). Repeats pool: each generation is one prediction.
    columns
        Names of the n_cols columns.
    average_over
        The columns the macro (mean of per-column values) and micro (pooled counts) averages use;
        a column whose metric is undefined is left out of the macro mean.
    n_boot, seed, level
        Bootstrap resamples of cases, RNG seed, CI level (percentile method).

    Returns
    -------
    dict
        ``{"per_finding": {col: {"tp","fp","fn","tn","n", metric: {"value","ci"}}}, "macro": {...},
        "micro": {...}, "bootstrap": {"resamples", "seed", "level"}}``.
    """
    counts = case_counts(truth, pred)                                    # (n, c, 4)
    weights = bootstrap_weights(counts.shape[0], n_boot, seed)           # (B, n)
    boot = np.einsum("bn,nck->bck", weights, counts) if n_boot else np.zeros((0,) + counts.shape[1:])
    total = counts.sum(axis=0)                                           # (c, 4)
    point, boot_rates = rates(total), rates(boot)                        # {m: (c,)}, {m: (B, c)}
    avg_idx = [columns.index(name) for name in average_over if name in columns]
    alpha = (1.0 - level) / 2.0

    def summary(value: float, samples: np.ndarray) -> dict:
        return {"value": _num(value), "ci": _ci(samples, alpha)}

    per = {}
    for j, name in enumerate(columns):
        tp, fp, fn, tn = (int(v) for v in total[j])
        entry = {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": tp + fp + fn + tn}
        for m in METRICS:
            entry[m] = summary(point[m][j], boot_rates[m][:, j])
        per[name] = entry

    macro, micro = {"findings": [columns[j] for j in avg_idx]}, {}
    micro_total = total[avg_idx].sum(axis=0)
    micro_point, micro_boot = rates(micro_total), rates(boot[:, avg_idx].sum(axis=1))
    micro.update({k: int(v) for k, v in zip(("tp", "fp", "fn", "tn"), micro_total)})
    for m in METRICS:
        macro[m] = summary(_nanmean(point[m][avg_idx]), _nanmean(boot_rates[m][:, avg_idx], axis=-1))
        micro[m] = summary(micro_point[m], micro_boot[m])
    return {"per_finding": per, "macro": macro, "micro": micro,
            "bootstrap": {"resamples": n_boot, "seed": seed, "level": level}}


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class only."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_curve(y: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """ROC points: one per distinct score (descending), from (0, 0); predicted positive if score >= threshold."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n1, n0 = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    thresholds = np.unique(s)[::-1]
    tpr = [0.0] + [float((s[y] >= t).sum() / n1) for t in thresholds]
    fpr = [0.0] + [float((s[~y] >= t).sum() / n0) for t in thresholds]
    return {"fpr": fpr, "tpr": tpr, "thresholds": [float("inf")] + [float(t) for t in thresholds]}


def threshold_table(y: np.ndarray, scores: np.ndarray,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict]:
    """Operating points: for each threshold (positive if score >= t) the counts and the metrics."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    rows = []
    for t in thresholds:
        p = s >= t
        c = np.array([(p & y).sum(), (p & ~y).sum(), (~p & y).sum(), (~p & ~y).sum()])
        r = rates(c)
        rows.append({"threshold": float(t), "tp": int(c[0]), "fp": int(c[1]), "fn": int(c[2]), "tn": int(c[3]),
                     **{m: _num(r[m]) for m in METRICS}})
    return rows


def score_metrics(truth: np.ndarray, scores: np.ndarray, columns: Sequence[str], *, n_boot: int = 1000,
                  seed: int = 0, level: float = 0.95,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """ROC AUC (bootstrap CI over cases), ROC curve and threshold table per column.

    Parameters
    ----------
    truth
        (n_cases, n_cols) codes, policy applied; UNKNOWN cases are left out of that column.
    scores
        (n_cases, n_cols) probabilities; NaN where no score was computed.
    """
    weights = bootstrap_weights(truth.shape[0], n_boot, seed)
    alpha = (1.0 - level) / 2.0
    out = {}
    for j, name in enumerate(columns):
        keep = (truth[:, j] != UNKNOWN) & ~np.isnan(scores[:, j])
        y, s = truth[keep, j] == PRESENT, scores[keep, j]
        w = weights[:, keep]
        boot = np.array([roc_auc(np.repeat(y, w[b]), np.repeat(s, w[b])) for b in range(n_boot)])
        out[name] = {"n": int(keep.sum()), "positives": int(y.sum()),
                     "auc": {"value": _num(roc_auc(y, s)), "ci": _ci(boot, alpha)},
                     "roc": roc_curve(y, s), "thresholds": threshold_table(y, s, thresholds)}
    return out


def agreement(pred: np.ndarray, columns: Sequence[str]) -> dict:
    """How often the repeats of one image give the same label (raw labels, uncertain its own class).

    Parameters
    ----------
    pred
        (n_cases, n_repeats, n_cols) codes before any policy. Cases with fewer than two known
        repeats for a column are left out of it.

    Returns
    -------
    dict
        Per column: ``all_agree`` (share of images whose repeats all match), ``pairwise`` (mean
        share of agreeing repeat pairs), ``n``; and ``all_findings_agree`` (share of images whose
        every column matches across all their repeats).
    """
    out: dict = {}
    consistent = []
    for j, name in enumerate(columns):
        all_agree, pairwise = [], []
        for i in range(pred.shape[0]):
            labs = pred[i, :, j]
            labs = labs[labs != UNKNOWN]
            r = labs.size
            if r < 2:
                continue
            _, k = np.unique(labs, return_counts=True)
            all_agree.append(float(k.size == 1))
            pairwise.append(float((k * (k - 1)).sum() / (r * (r - 1))))
        out[name] = {"n": len(all_agree), "all_agree": _num(np.mean(all_agree)) if all_agree else None,
                     "pairwise": _num(np.mean(pairwise)) if pairwise else None}
    for i in range(pred.shape[0]):
        rows = pred[i]                                           # (r, c)
        rows = rows[(rows != UNKNOWN).all(axis=1)]
        if rows.shape[0] >= 2:
            consistent.append(float((rows == rows[0]).all()))
    out["all_findings_agree"] = {"n": len(consistent),
                                 "value": _num(np.mean(consistent)) if consistent else None}
    return out


def abnormal_codes(labels: np.ndarray, columns: Sequence[str], pathologies: Sequence[str]) -> np.ndarray:
    """Any-finding-present per row: 1 if a pathology is present, else -1 if one is uncertain,
    else 0 if at least one is known, else UNKNOWN. ``labels`` (..., n_cols) -> (...)."""
    idx = [columns.index(p) for p in pathologies if p in columns]
    sub = labels[..., idx]
    out = np.full(sub.shape[:-1], UNKNOWN, dtype=np.int8)
    out[(sub != UNKNOWN).any(axis=-1)] = ABSENT
    out[(sub == UNCERTAIN).any(axis=-1)] = UNCERTAIN
    out[(sub == PRESENT).any(axis=-1)] = PRESENT
    return out


def to_counts_table(per_finding: Mapping[str, dict]) -> dict[str, list[list[int]]]:
    """2x2 confusion matrices [[TN, FP], [FN, TP]] (rows: truth absent/present), for plots."""
    return {k: [[v["tn"], v["fp"]], [v["fn"], v["tp"]]] for k, v in per_finding.items()}


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean rank of their block."""
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _nanmean(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the defined values; NaN (no warning) when none is defined."""
    a = np.asarray(a, dtype=np.float64)
    n = (~np.isnan(a)).sum(axis=axis)
    total = np.where(np.isnan(a), 0.0, a).sum(axis=axis)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _ci(samples: np.ndarray, alpha: float) -> list[float] | None:
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return None
    lo, hi = np.percentile(samples, [100 * alpha, 100 * (1 - alpha)])
    return [float(lo), float(hi)]
