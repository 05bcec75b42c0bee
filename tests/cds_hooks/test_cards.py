"""Card building (issue 5 item 4, issue 13): summary and indicator from present and uncertain findings, a short
inert detail, suggestion, review link, prior and pending wording per hook."""
from __future__ import annotations

import re
from types import SimpleNamespace

from cds_hooks import cards
from prompts.findings import FINDING_NAMES, Finding, Findings
from tests.cds_hooks.checks import check_card

CFG = cards.CardSettings(base_url="https://cds.example.org", source_label="CXR AI",
                         source_url="https://cds.example.org/cds-services",
                         review_link=lambda a, c: f"https://cds.example.org/review/{a}?token=t-{c}")


def _analysis(present: dict[str, dict] | None = None, absent=(), text="Report <b>text</b>.",
              uncertain: dict[str, dict] | None = None, model: dict | None = None):
    present, uncertain = present or {}, uncertain or {}
    items = []
    for name in FINDING_NAMES:
        if name in present:
            items.append(Finding(name=name, presence="present", **{"evidence": f"there is {name.replace('_', ' ')}", **present[name]}))
        elif name in uncertain:
            fields = {"evidence": f"cannot exclude {name}", **uncertain[name]}
            items.append(Finding(name=name, presence="uncertain", **fields))
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
        model=model or {"name": "cxr-llava-tiny", "revision": "r1", "dtype": "float32", "quantization": "none",
                        "prompt_id": "report_context", "prompt_version": "v1"})


def test_indicator_follows_severity():
    assert cards.indicator_for(_analysis({"pneumothorax": {"laterality": "right"}}).findings, ("pneumothorax",)) == "critical"
    assert cards.indicator_for(_analysis({"pleural_effusion": {}}).findings, ("pneumothorax",)) == "warning"
    assert cards.indicator_for(_analysis({"support_devices": {}, "no_acute_finding": {}}).findings,
                               ("pneumothorax",)) == "info"
    assert cards.indicator_for(_analysis({"pleural_effusion": {}}).findings, ("pleural_effusion",)) == "critical"
    assert cards.indicator_for(_analysis(uncertain={"consolidation": {}}).findings, ("pneumothorax",)) == "warning"


def test_uncertain_pneumothorax_gives_a_critical_card_that_names_it():
    text = "Cannot exclude a small right apical pneumothorax."
    a = _analysis(uncertain={"pneumothorax": {"laterality": "right", "severity": "small", "evidence": text,
                                              "span": (0, len(text))}}, text=text)
    card = cards.draft_card(a, CFG, patient_id="pat-1")
    check_card(card)
    assert card["indicator"] == "critical"
    assert card["summary"] == "AI draft, chest X-ray 2026-11-28: possible small right pneumothorax"
    assert "- **Pneumothorax**: uncertain, small, right: “Cannot exclude a small right apical pneumothorax.”" \
        in card["detail"]


def test_summary_names_present_then_uncertain_findings():
    a = _analysis({"pleural_effusion": {"laterality": "left", "severity": "small"}},
                  uncertain={"pneumothorax": {"laterality": "right"}})
    card = cards.draft_card(a, CFG, patient_id="pat-1")
    assert card["summary"] == "AI draft, chest X-ray 2026-11-28: small left pleural effusion; possible right pneumothorax"
    assert card["indicator"] == "critical"
    prior = cards.prior_card(a, CFG)
    assert prior["summary"].endswith(": small left pleural effusion; possible right pneumothorax")
    assert prior["indicator"] == "info"                              # a prior's findings are old news


def test_draft_card_detail_is_short_and_links_the_review_page():
    a = _analysis({"pleural_effusion": {"laterality": "left", "severity": "small"},
                   "pneumothorax": {"laterality": "right"}}, absent=("cardiomegaly",))
    card = cards.draft_card(a, CFG, patient_id="pat-1", encounter_id="enc-1")
    check_card(card)
    assert card["summary"] == "AI draft, chest X-ray 2026-11-28: right pneumothorax; small left pleural effusion"
    assert card["indicator"] == "critical"
    report = card["suggestions"][0]["actions"][0]["resource"]
    assert report["subject"] == {"reference": "Patient/pat-1"} and report["encounter"] == {"reference": "Encounter/enc-1"}
    assert "subject" not in a.diagnostic_report                     # the stored draft is not touched
    detail = card["detail"]
    assert detail.count("AI-generated draft for clinician review") == 1         # one disclaimer line
    assert "**Study:** chest X-ray 2026-11-28, PA view (DX)" in detail
    assert "- **Pneumothorax**: present, right: “there is pneumothorax”" in detail
    assert "- **Pleural effusion**: present, small, left: “there is pleural effusion”" in detail
    assert "- Reported absent: cardiomegaly" in detail
    assert "Model cxr-llava-tiny (revision r1); prompt report_context version v1" in detail
    # no UID, no accession, no whole report: those are on the review page
    assert "1.2.3" not in detail and "ACC1" not in detail and "Report &lt;b&gt;text" not in detail
    assert "stopped at the length limit" not in detail
    (link,) = card["links"]
    assert link == {"label": "Review the AI draft: image, evidence, agree or correct",
                    "url": f"https://cds.example.org/review/a-1?token=t-{card['uuid']}", "type": "absolute"}
    assert card["selectionBehavior"] == "at-most-one" and len(card["overrideReasons"]) == 4


def test_model_text_renders_inert():
    evil = ("`rm -rf` [click](https://evil.example/x) ![i](https://evil.example/i.png) <script>alert(1)</script> "
            "**b** _i_ \x07\x1b[31m\x00\ufffd | a | b |")
    inert = cards.markdown_text(evil)
    # no control character or U+FFFD, no raw HTML tag, no Markdown punctuation left unescaped
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\ufffd]", inert)
    assert "<" not in inert and ">" not in inert and "&lt;script&gt;alert\\(1\\)&lt;/script&gt;" in inert
    assert not re.search(r"(?<!\\)[`\[\]()*_|!]", inert.replace("\\\\", "")), inert
    assert inert.startswith("\\`rm -rf\\` \\[click\\]\\(https://evil.example/x\\) \\!\\[i\\]")
    assert cards.markdown_text("a\tb\nc\r\nd") == "a b c d"                   # one line, whitespace collapsed
    # on a card: the quoted phrase and every qualifier the model wrote go through the same escaping
    a = _analysis({"pleural_effusion": {"laterality": "left", "severity": "<b>`x`</b>", "evidence": evil}})
    card = cards.draft_card(a, CFG, patient_id="p")
    check_card(card)                                                   # includes: no raw HTML tag in detail
    line = next(x for x in card["detail"].splitlines() if x.startswith("- **Pleural effusion**"))
    assert "&lt;b&gt;\\`x\\`&lt;/b&gt;" in line and "“\\`rm -rf\\` \\[click\\]" in line
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\ufffd]", card["detail"])


def test_evidence_is_capped_to_one_short_phrase():
    run_on = " ".join(["mild patchy opacity at the right base without sentence punctuation"] * 20)
    a = _analysis({"lung_opacity": {"evidence": run_on}}, text=run_on)
    detail = cards.draft_card(a, CFG, patient_id="p")["detail"]
    quoted = re.search("“(.*?)”", detail).group(1)
    assert len(quoted) <= cards.EVIDENCE_MAX and quoted.endswith("…")
    assert run_on not in detail and len(detail) < 900
    assert cards.short_phrase("short one.") == "short one."


def test_a_report_cut_at_the_token_limit_says_so():
    model = {"name": "m", "revision": "r", "prompt_id": "report_context", "prompt_version": "v1",
             "finish_reason": "length"}
    card = cards.draft_card(_analysis({"edema": {}}, model=model), CFG, patient_id="p")
    assert "**The report stopped at the length limit: incomplete.**" in card["detail"]
    assert cards.truncated(model) and not cards.truncated({"finish_reason": "eos"}) and not cards.truncated({})


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
    assert card["links"][0]["url"].startswith("https://cds.example.org/review/a-1?token=")
    latest = cards.prior_card(_analysis({"pneumothorax": {}}), CFG, latest=True)
    assert latest["summary"].startswith("Latest chest X-ray") and latest["indicator"] == "critical"


def test_pending_cards_say_what_happens_for_that_hook():
    study = {"study_instance_uid": "1.2", "study_date": "2026-11-28"}
    select = cards.pending_card(CFG, study=study, hook="order-select")
    assert select["summary"] == "AI draft in preparation for the chest X-ray of 2026-11-28"
    assert "offered when this order is signed" in select["detail"]
    for card in (cards.pending_card(CFG, study=study, hook="patient-view"),
                 cards.pending_card(CFG, study=study, hook="order-select", prior=True),
                 cards.pending_card(CFG, study=study, hook="order-sign", prior=True),
                 cards.pending_card(CFG, hook="patient-view")):
        check_card(card)
        assert "order signing" not in card["detail"] and "signed" not in card["detail"], card
    assert cards.pending_card(CFG, study=study, hook="patient-view")["summary"].startswith("AI findings in preparation")
    prior = cards.pending_card(CFG, study=study, hook="order-select", prior=True)
    assert prior["summary"] == "AI findings in preparation for the prior chest X-ray of 2026-11-28"
    assert "no draft of it can be offered until it arrives" in prior["detail"]
    assert "1.2" not in select["detail"]                                           # no UID on the card


def test_pending_and_notice_cards_are_valid():
    for card in (cards.pending_card(CFG), cards.pending_card(CFG, study={"study_instance_uid": "1.2", "study_date": "2026-11-28"}),
                 cards.notice_card(CFG, "No AI draft: x", "because")):
        check_card(card)
        assert card["indicator"] == "info" and "suggestions" not in card
