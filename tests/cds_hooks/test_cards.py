"""Card building (issue 5 item 4): summary, indicator by severity, detail, suggestion, prior labelling."""
from __future__ import annotations

from types import SimpleNamespace

from cds_hooks import cards
from prompts.findings import FINDING_NAMES, Finding, Findings
from tests.cds_hooks.checks import check_card

CFG = cards.CardSettings(base_url="https://cds.example.org", source_label="CXR AI",
                         source_url="https://cds.example.org/cds-services")


def _analysis(present: dict[str, dict] | None = None, absent=(), text="Report <b>text</b>."):
    present = present or {}
    items = []
    for name in FINDING_NAMES:
        if name in present:
            items.append(Finding(name=name, presence="present", evidence=f"there is {name}", **present[name]))
        elif name in absent:
            items.append(Finding(name=name, presence="absent", evidence=f"no {name}"))
        else:
            items.append(Finding(name=name))
    return SimpleNamespace(
        analysis_id="a-1", report_text=text, findings=Findings(tuple(items)),
        diagnostic_report={"resourceType": "DiagnosticReport", "status": "preliminary",
                           "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5"}]}},
        study={"study_instance_uid": "1.2.3", "sop_instance_uid": "1.2.3.4", "accession_number": "ACC1",
               "study_date": "2026-11-28", "view_position": "PA", "modality": "DX",
               "selection_reason": "PA view"},
        model={"name": "cxr-llava-tiny", "revision": "r1", "dtype": "float32", "quantization": "none",
               "prompt_id": "report_context", "prompt_version": "v1"})


def test_indicator_follows_severity():
    assert cards.indicator_for(_analysis({"pneumothorax": {"laterality": "right"}}).findings, ("pneumothorax",)) == "critical"
    assert cards.indicator_for(_analysis({"pleural_effusion": {}}).findings, ("pneumothorax",)) == "warning"
    assert cards.indicator_for(_analysis({"support_devices": {}, "no_acute_finding": {}}).findings,
                               ("pneumothorax",)) == "info"
    assert cards.indicator_for(_analysis({"pleural_effusion": {}}).findings, ("pleural_effusion",)) == "critical"


def test_draft_card_names_leading_findings_and_carries_the_report():
    a = _analysis({"pleural_effusion": {"laterality": "left", "severity": "small"},
                   "pneumothorax": {"laterality": "right"}}, absent=("cardiomegaly",))
    card = cards.draft_card(a, CFG, patient_id="pat-1", encounter_id="enc-1")
    check_card(card)
    assert card["summary"] == "AI draft, chest X-ray 2026-11-28: right pneumothorax, small left pleural effusion"
    assert card["indicator"] == "critical"
    report = card["suggestions"][0]["actions"][0]["resource"]
    assert report["subject"] == {"reference": "Patient/pat-1"} and report["encounter"] == {"reference": "Encounter/enc-1"}
    assert "subject" not in a.diagnostic_report                     # the stored draft is not touched
    detail = card["detail"]
    assert "AI-generated draft for clinician review" in detail
    assert "accession ACC1" in detail and "dated 2026-11-28" in detail and "DX PA view" in detail
    assert "**Cardiomegaly**: absent" in detail and "**Pneumothorax**: present (right)" in detail
    assert "prompt report_context version v1" in detail and "revision r1" in detail
    assert "<b>" not in detail and "&lt;b&gt;" in detail            # model text can't inject HTML
    assert card["links"][0]["url"] == "https://cds.example.org/drafts/a-1"
    assert card["selectionBehavior"] == "at-most-one" and len(card["overrideReasons"]) == 4


def test_summary_is_cut_to_139_characters():
    many = {n: {"laterality": "bilateral", "severity": "moderate"} for n in FINDING_NAMES[:11]}
    card = cards.draft_card(_analysis(many), CFG, patient_id="p")
    check_card(card)
    assert len(card["summary"]) <= 139 and card["summary"].endswith("…")
    assert cards.fit_summary("x" * 200) == "x" * 138 + "…"


def test_no_finding_summary():
    card = cards.draft_card(_analysis({"no_acute_finding": {}}), CFG, patient_id="p")
    assert card["summary"].endswith(": no acute finding") and card["indicator"] == "info"
    card = cards.draft_card(_analysis(), CFG, patient_id="p", encounter_id=None)
    assert card["summary"].endswith(": no abnormal finding named")
    assert "encounter" not in card["suggestions"][0]["actions"][0]["resource"]
    assert "No finding was named" in card["detail"]


def test_prior_card_is_labelled_and_suggests_nothing():
    card = cards.prior_card(_analysis({"pneumothorax": {}}), CFG)
    check_card(card)
    assert card["summary"].startswith("Prior chest X-ray 2026-11-28 (AI findings): pneumothorax")
    assert card["indicator"] == "info" and "suggestions" not in card
    assert "PRIOR study from 2026-11-28, not the study just ordered" in card["detail"]
    latest = cards.prior_card(_analysis({"pneumothorax": {}}), CFG, latest=True)
    assert latest["summary"].startswith("Latest chest X-ray") and latest["indicator"] == "critical"


def test_pending_and_notice_cards_are_valid():
    for card in (cards.pending_card(CFG), cards.pending_card(CFG, study={"study_instance_uid": "1.2", "study_date": "2026-11-28"}),
                 cards.notice_card(CFG, "No AI draft: x", "because")):
        check_card(card)
        assert card["indicator"] == "info" and "suggestions" not in card
