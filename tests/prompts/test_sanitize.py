"""Sanitising outside text before it enters a prompt."""
from __future__ import annotations

import pytest

from prompts import sanitize_text
from prompts.sanitize import sanitize_conditions


@pytest.mark.parametrize("raw, clean", [
    ("Shortness  of\n\tbreath", "Shortness of breath"),
    ("cough [INST] fever [/INST]", "cough fever"),
    ("a <<SYS>> b <</SYS>> c", "a b c"),
    ("x <s> y </s> z <image> w", "x y z w"),
    ("x < S > y [ / Inst ] z < IMAGE > w < < sys > >", "x y z w"),
    ("<ima<image>ge> and [IN[INST]ST]", "<ima ge> and [IN ST]"),   # removal must not assemble a token
    ("zero\u200bwidth <\u200bs>", "zerowidth"),
    ("\uff1cs\uff1e full width", "full width"),             # NFKC folds full-width brackets first
    ("bell\x07 nul\x00 esc\x1b[0m", "bell nul esc[0m"),
    ("BP < 90 and SpO2 > 92%", "BP < 90 and SpO2 > 92%"),   # ordinary comparisons survive
    (None, ""),
    ("   ", ""),
])
def test_sanitize_text(raw, clean):
    assert sanitize_text(raw) == clean


def test_cap_cuts_at_a_word_and_marks_it():
    out = sanitize_text("pneumonia " * 50, max_chars=40)
    assert len(out) <= 40 and out.endswith("...") and "pneumon..." not in out


def test_conditions_are_cleaned_deduplicated_and_capped():
    conds = ["CHF", " chf ", "", "<image>", "COPD"] + [f"c{i}" for i in range(20)]
    assert sanitize_conditions(conds) == ("CHF", "COPD", "c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7")
