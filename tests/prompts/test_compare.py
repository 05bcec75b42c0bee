"""Change since the prior, from two reports' coded findings (issue 14): every category, with both phrases."""
from __future__ import annotations

from datetime import date

import pytest

from prompts import CHANGE_ORDER, SEVERITY_RANK, compare_findings, extract_findings

PRIOR = ("No pleural effusion. Mild cardiomegaly. Right lower lobe consolidation. Moderate pulmonary edema. "
         "Left upper lobe nodule. Left basilar atelectasis. No pneumothorax.")
CURRENT = ("Small right pleural effusion. Moderate cardiomegaly. No consolidation. Mild pulmonary edema. "
           "Left upper lobe nodule. Possible left basilar atelectasis. No pneumothorax.")


def _compare(current: str, prior: str):
    return compare_findings(extract_findings(current), extract_findings(prior), prior_date=date(2026, 11, 20))


def test_each_category_with_the_evidence_phrase_of_each_report():
    comparison = _compare(CURRENT, PRIOR)
    changes = {item.name: item.change for item in comparison}
    assert changes == {"pleural_effusion": "new", "cardiomegaly": "worse", "consolidation": "resolved",
                       "edema": "better", "nodule_or_mass": "unchanged", "atelectasis": "not_comparable",
                       "pneumothorax": "unchanged"}
    effusion = comparison["pleural_effusion"]
    assert effusion.current_evidence == "Small right pleural effusion."
    assert effusion.prior_evidence == "No pleural effusion."
    assert comparison["cardiomegaly"].reason == "moderate now, mild before"
    assert comparison["edema"].reason == "mild now, moderate before"
    assert comparison["atelectasis"].reason == "uncertain in the current report"
    assert comparison["pneumothorax"].reason == "absent in both reports"
    assert comparison.prior_date == date(2026, 11, 20)
    # new and worse first
    assert [i.change for i in comparison.ordered()][:3] == ["new", "worse", "resolved"]
    assert comparison.to_json()["items"][0]["prior"]["evidence"]


def test_a_finding_one_report_does_not_mention_is_not_comparable_and_one_neither_mentions_is_left_out():
    comparison = _compare("Small right pleural effusion.", "Heart size is normal.")
    assert comparison["pleural_effusion"].change == "not_comparable"
    assert comparison["pleural_effusion"].reason == "not mentioned in the prior report"
    assert comparison["cardiomegaly"].reason == "not mentioned in the current report"
    assert {i.name for i in comparison} == {"pleural_effusion", "cardiomegaly"}
    with pytest.raises(KeyError, match="'pneumothorax' is mentioned in neither report"):
        comparison["pneumothorax"]


@pytest.mark.parametrize("current, prior, change, reason", [
    ("Bilateral pleural effusions.", "Right pleural effusion.", "worse", "bilateral now, right before"),
    ("Left pleural effusion.", "Bilateral pleural effusions.", "better", "left now, bilateral before"),
    ("Left pleural effusion.", "Right pleural effusion.", "not_comparable", "right before, left now"),
    ("Large bilateral pleural effusions.", "Small right pleural effusion.", "worse",
     "large now, small before; bilateral now, right before"),
    ("Small bilateral pleural effusions.", "Large right pleural effusion.", "not_comparable",
     "severity and extent changed in opposite directions"),
    ("Moderate right pleural effusion.", "Right pleural effusion.", "unchanged",
     "severity stated in the current report only"),
    ("Small right pleural effusion.", "Trace right pleural effusion.", "unchanged", "small now, trace before"),
    ("Possible pneumothorax.", "Possible pneumothorax.", "not_comparable", "uncertain in both reports"),
])
def test_severity_and_laterality_where_the_reports_state_them(current, prior, change, reason):
    name = "pneumothorax" if "pneumothorax" in current else "pleural_effusion"
    item = _compare(current, prior)[name]
    assert (item.change, item.reason) == (change, reason)


def test_severity_order_is_stated_once_and_covers_the_labeler_vocabulary():
    import json
    from pathlib import Path

    import prompts

    words = set(json.loads((Path(prompts.__file__).parent / "lexicon" / "cues.json").read_text())["severity"].values())
    assert words <= set(SEVERITY_RANK)
    assert SEVERITY_RANK["trace"] == SEVERITY_RANK["mild"] < SEVERITY_RANK["moderate"] < SEVERITY_RANK["large"]
    assert CHANGE_ORDER[:2] == ("new", "worse")


def test_no_acute_finding_is_not_compared():
    comparison = _compare("No acute cardiopulmonary abnormality.", "Right pleural effusion.")
    assert "no_acute_finding" not in {i.name for i in comparison}
