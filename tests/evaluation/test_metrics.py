"""Metrics against values computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation import metrics as M

P, A, U, X = M.PRESENT, M.ABSENT, M.UNCERTAIN, M.UNKNOWN


def test_rates_by_hand():
    # TP 3, FP 1, FN 2, TN 4
    r = M.rates(np.array([3, 1, 2, 4]))
    assert r["sensitivity"] == pytest.approx(3 / 5)
    assert r["specificity"] == pytest.approx(4 / 5)
    assert r["ppv"] == pytest.approx(3 / 4)
    assert r["npv"] == pytest.approx(4 / 6)
    assert r["f1"] == pytest.approx(6 / 9)
    assert r["accuracy"] == pytest.approx(7 / 10)


def test_undefined_metrics_are_none_not_zero():
    truth = np.array([[A], [A]], dtype=np.int8)
    pred = np.array([[[A]], [[A]]], dtype=np.int8)
    m = M.confusion_metrics(truth, pred, ["edema"], average_over=["edema"], n_boot=50)
    e = m["per_finding"]["edema"]
    assert (e["tn"], e["n"]) == (2, 2)
    assert e["sensitivity"] == {"value": None, "ci": None}
    assert e["f1"]["value"] is None and m["macro"]["f1"]["value"] is None
    # every resample is all-TN: the CI collapses onto the point
    assert e["specificity"] == {"value": 1.0, "ci": [1.0, 1.0]}


def test_policies_map_uncertain():
    codes = np.array([P, A, U, X], dtype=np.int8)
    assert M.apply_policy(codes, "exclude").tolist() == [P, A, X, X]
    assert M.apply_policy(codes, "positive").tolist() == [P, A, P, X]
    assert M.apply_policy(codes, "negative").tolist() == [P, A, A, X]
    with pytest.raises(ValueError, match="unknown uncertain-label policy 'maybe'; choose one of exclude"):
        M.apply_policy(codes, "maybe")


def test_macro_micro_and_pooled_repeats_by_hand():
    # 3 cases x 2 repeats x 2 findings
    truth = np.array([[P, A], [A, P], [P, X]], dtype=np.int8)
    pred = np.array([[[P, A], [A, A]],
                     [[P, P], [A, P]],
                     [[P, P], [P, A]]], dtype=np.int8)
    m = M.confusion_metrics(truth, pred, ["a", "b"], average_over=["a", "b"], n_boot=0)
    a, b = m["per_finding"]["a"], m["per_finding"]["b"]
    # a: case0 TP, FN; case1 FP, TN; case2 TP, TP -> TP3 FP1 FN1 TN1
    assert (a["tp"], a["fp"], a["fn"], a["tn"]) == (3, 1, 1, 1)
    # b: case0 TN TN; case1 TP TP; case2 unknown truth -> excluded
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (2, 0, 0, 2)
    assert a["f1"]["value"] == pytest.approx(6 / 8)
    assert m["macro"]["f1"]["value"] == pytest.approx((6 / 8 + 1.0) / 2)
    assert m["micro"]["f1"]["value"] == pytest.approx(10 / 12)             # TP5 FP1 FN1
    assert m["micro"]["specificity"]["value"] == pytest.approx(3 / 4)      # TN3 FP1
    assert a["f1"]["ci"] is None                                          # no resamples asked


def test_bootstrap_is_seeded_and_brackets_the_point():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, size=(40, 1)).astype(np.int8)
    pred = np.where(rng.random((40, 1, 1)) < 0.8, truth[:, None, :], 1 - truth[:, None, :]).astype(np.int8)
    one = M.confusion_metrics(truth, pred, ["x"], average_over=["x"], n_boot=300, seed=7)
    two = M.confusion_metrics(truth, pred, ["x"], average_over=["x"], n_boot=300, seed=7)
    other = M.confusion_metrics(truth, pred, ["x"], average_over=["x"], n_boot=300, seed=8)
    f1 = one["per_finding"]["x"]["f1"]
    assert f1 == two["per_finding"]["x"]["f1"]
    assert f1["ci"] != other["per_finding"]["x"]["f1"]["ci"]
    assert f1["ci"][0] < f1["value"] < f1["ci"][1]
    assert one["bootstrap"] == {"resamples": 300, "seed": 7, "level": 0.95}


def test_roc_auc_with_ties_by_hand():
    y = np.array([1, 0, 1, 0, 1], dtype=bool)
    s = np.array([0.9, 0.1, 0.5, 0.5, 0.2])
    # positive/negative pairs: .9 beats both (2); .5 beats .1, ties .5 (1.5); .2 beats .1 (1) -> 4.5/6
    assert M.roc_auc(y, s) == pytest.approx(0.75)
    assert np.isnan(M.roc_auc(np.array([True, True]), np.array([0.1, 0.2])))


def test_roc_curve_and_threshold_table():
    y = np.array([1, 1, 0, 0], dtype=bool)
    s = np.array([0.8, 0.4, 0.6, 0.2])
    curve = M.roc_curve(y, s)
    assert curve["fpr"] == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert curve["tpr"] == [0.0, 0.5, 0.5, 1.0, 1.0]
    table = {row["threshold"]: row for row in M.threshold_table(y, s, thresholds=(0.3, 0.5, 0.9))}
    assert (table[0.5]["tp"], table[0.5]["fp"], table[0.5]["fn"], table[0.5]["tn"]) == (1, 1, 1, 1)
    assert table[0.3]["sensitivity"] == 1.0 and table[0.3]["specificity"] == 0.5
    assert table[0.9]["ppv"] is None and table[0.9]["npv"] == 0.5


def test_score_metrics_leaves_out_unknown_and_missing():
    truth = np.array([[P], [A], [X], [P], [A]], dtype=np.int8)
    scores = np.array([[0.9], [0.3], [0.99], [np.nan], [0.8]])
    out = M.score_metrics(truth, scores, ["x"], n_boot=20)["x"]
    assert (out["n"], out["positives"]) == (3, 1)
    assert out["auc"]["value"] == 1.0


def test_agreement_across_repeats_by_hand():
    pred = np.array([
        [[P, A], [P, A], [A, A]],     # a: 2 of 3 agree
        [[U, A], [U, A], [U, A]],     # all agree (uncertain is its own class)
        [[P, X], [X, X], [X, X]],     # fewer than two known repeats: left out
    ], dtype=np.int8)
    out = M.agreement(pred, ["a", "b"])
    assert out["a"] == {"n": 2, "all_agree": 0.5, "pairwise": pytest.approx((2 / 6 + 1) / 2)}
    assert out["b"] == {"n": 2, "all_agree": 1.0, "pairwise": 1.0}
    assert out["all_findings_agree"] == {"n": 2, "value": 0.5}


def test_abnormal_codes():
    labels = np.array([[A, A], [U, A], [U, P], [X, X], [X, A]], dtype=np.int8)
    assert M.abnormal_codes(labels, ["a", "b"], ["a", "b"]).tolist() == [A, U, P, X, A]
    # a column that is not a pathology does not count
    assert M.abnormal_codes(labels, ["a", "b"], ["a"]).tolist() == [A, U, U, X, X]
