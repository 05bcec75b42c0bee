"""Focused tests for each rule of the findings labeler (the corpus test measures the whole)."""
from __future__ import annotations

import pytest

from prompts import FINDING_NAMES, PRIMARY_FINDINGS, Finding, Findings, extract_findings
from prompts.labeler import EVIDENCE_MAX_CHARS


def presence(text: str, name: str) -> str:
    return extract_findings(text)[name].presence


# ---------------------------------------------------------------- negation

@pytest.mark.parametrize("text", [
    "No focal consolidation, pleural effusion, or pneumothorax.",
    "There is no evidence of consolidation, pleural effusion or pneumothorax.",
    "The lungs are clear without consolidation, pleural effusion, or pneumothorax.",
    "Neither consolidation, pleural effusion nor pneumothorax is present.",
])
def test_negation_reaches_across_a_list(text):
    f = extract_findings(text)
    assert [f[n].presence for n in ("consolidation", "pleural_effusion", "pneumothorax")] == ["absent"] * 3


@pytest.mark.parametrize("text", [
    "No pneumothorax, but there is a small left pleural effusion.",
    "No pneumothorax; small left pleural effusion.",
    "No pneumothorax and there is a small left pleural effusion.",
    "No pneumothorax, however a small left pleural effusion is seen.",
])
def test_negation_scope_ends_at_clause_words_and_verbs(text):
    f = extract_findings(text)
    assert (f["pneumothorax"].presence, f["pleural_effusion"].presence) == ("absent", "present")


@pytest.mark.parametrize("text", ["Pneumothorax is not seen.", "Pleural effusions are not identified.",
                                  "The heart is not enlarged.", "Pneumonia is unlikely."])
def test_negation_after_the_mention(text):
    assert [f.presence for f in extract_findings(text).mentioned()] == ["absent"]


@pytest.mark.parametrize("text", ["No change in the small left pleural effusion.",
                                  "Left pleural effusion, not significantly changed.",
                                  "Left pleural effusion without interval change."])
def test_no_change_is_not_a_negation(text):
    assert presence(text, "pleural_effusion") == "present"


def test_negated_link_negates_what_it_points_at():
    f = extract_findings("No focal opacity to suggest pneumonia. No findings concerning for edema.")
    assert (f["lung_opacity"].presence, f["pneumonia"].presence, f["edema"].presence) == ("absent",) * 3


# ---------------------------------------------------------------- uncertainty

@pytest.mark.parametrize("text", [
    "Pneumonia cannot be excluded.",
    "Cannot exclude pneumonia.",
    "Possible pneumonia.",
    "Opacity may represent pneumonia.",
    "Questionable pneumonia.",
    "Findings suggestive of pneumonia.",
    "Opacity concerning for pneumonia.",
    "Opacity suspicious for pneumonia.",
    "Probable pneumonia.",
    "Likely pneumonia.",
    "Pneumonia is not excluded.",
    "Differential diagnosis includes pneumonia.",
    "Atelectasis versus pneumonia.",
    "Atelectasis vs. pneumonia.",
    "Atelectasis or pneumonia.",
    "Edema or pneumonia at the bases.",
    "Pneumonia?",
    "Clinical correlation to rule out pneumonia.",
    "Pneumonia is suspected.",
])
def test_uncertainty_cues(text):
    assert presence(text, "pneumonia") == "uncertain"


def test_uncertainty_does_not_spread_to_the_finding_being_interpreted():
    f = extract_findings("Left lower lobe opacity, which may represent atelectasis or pneumonia.")
    assert f["lung_opacity"].presence == "present"
    assert f["atelectasis"].presence == f["pneumonia"].presence == "uncertain"


@pytest.mark.parametrize("hedge", ["may reflect", "could reflect", "might reflect", "may be related to",
                                   "may be due to", "could represent", "may also reflect", "may well represent",
                                   "could potentially represent", "is favored to represent"])
def test_hedged_explanations(hedge):
    f = extract_findings(f"Right basilar opacity {hedge} atelectasis.")
    assert (f["lung_opacity"].presence, f["atelectasis"].presence) == ("present", "uncertain")
    # a sign of the finding the hedge names is no more certain than the finding (audit: this was "present")
    f = extract_findings(f"Blunting of the left costophrenic angle {hedge} a small effusion.")
    assert f["pleural_effusion"].presence == "uncertain"
    assert (f["pleural_effusion"].laterality, f["pleural_effusion"].severity) == ("left", "small")


@pytest.mark.parametrize("text", ["Cannot entirely exclude a small pneumonia.", "Potentially early pneumonia.",
                                  "Atelectasis is favored over pneumonia.", "Findings favor pneumonia."])
def test_more_uncertainty_cues(text):
    assert presence(text, "pneumonia") == "uncertain"


@pytest.mark.parametrize("text, name", [
    ("Slight blunting of the right costophrenic sulcus, which could be due to pleural thickening.", "pleural_effusion"),
    ("The enlarged cardiac silhouette could represent pericardial effusion.", "cardiomegaly"),
    ("Cephalization, possibly from fluid overload.", "edema"),
])
def test_a_sign_explained_with_a_hedge_is_uncertain(text, name):
    assert presence(text, name) == "uncertain"


@pytest.mark.parametrize("text, name", [
    ("Blunted left costophrenic angle and patchy opacity, likely atelectasis.", "pleural_effusion"),
    ("Small left pleural effusion, possibly loculated.", "pleural_effusion"),      # not a sign: the effusion is seen
    ("Kerley B lines at both bases.", "edema"),
    ("The cardiac silhouette is moderately enlarged.", "cardiomegaly"),
])
def test_a_hedge_about_something_else_leaves_the_finding_present(text, name):
    assert presence(text, name) == "present"


@pytest.mark.parametrize("qualifier", ["frank", "overt", "definite", "florid", "convincing"])
def test_without_a_qualified_finding_negates_it(qualifier):
    f = extract_findings(f"Patchy airspace opacities without {qualifier} consolidation.")
    assert (f["lung_opacity"].presence, f["consolidation"].presence) == ("present", "absent")
    assert presence(f"No {qualifier} pneumothorax.", "pneumothorax") == "absent"


@pytest.mark.parametrize("text", [
    "Vascular congestion without frank edema.",
    "Pulmonary venous congestion without overt alveolar edema.",
    "Mild cardiomegaly with pulmonary vascular congestion but no overt pulmonary edema.",
    "Cephalization of the upper lobe vessels without definite interstitial edema.",
    "Mild pulmonary vascular engorgement, no florid edema.",
])
def test_congestion_without_frank_edema_is_uncertain_edema(text):
    # Read as a radiologist: congestion is seen, frank (alveolar/interstitial) edema is not:
    # "present" would claim the edema the report denies and "absent" would drop the congestion it
    # describes. The same holds for other signs (a blunted costophrenic angle "without definite
    # effusion").
    assert presence(text, "edema") == "uncertain"
    assert presence("Blunted left costophrenic angle without definite effusion.", "pleural_effusion") == "uncertain"


@pytest.mark.parametrize("text, expected", [
    ("Pulmonary vascular congestion.", "uncertain"),
    ("Pulmonary vascular congestion again noted.", "uncertain"),
    ("Mild central pulmonary vascular congestion.", "uncertain"),
    ("Pulmonary vessels are engorged.", "uncertain"),
    ("Cephalization of the pulmonary vessels.", "uncertain"),
    ("No pulmonary vascular congestion.", "absent"),
    ("Heart size and pulmonary vascular engorgement appear within limits of normal.", "absent"),
    ("Pulmonary vascular congestion and mild interstitial edema.", "present"),
])
def test_vascular_congestion_is_at_most_an_uncertain_edema(text, expected):
    # The convention (prompts/lexicon/findings.json "indirect", README): congestion is a sign that
    # points at edema without being it. Uncertain keeps both readings: the evaluation's "uncertain
    # as positive" gives the CheXpert labeler's (congestion counts as edema), "uncertain as
    # negative" the human indexers' (it does not).
    assert presence(text, "edema") == expected


@pytest.mark.parametrize("text, name", [
    ("Left pleural effusion without definite right effusion.", "pleural_effusion"),
    ("Volume loss at the left base without frank collapse.", "atelectasis"),
    ("Pulmonary edema. No vascular congestion.", "edema"),
])
def test_a_denial_downgrades_only_a_sign_in_its_sentence(text, name):
    assert presence(text, name) == "present"


def test_clear_pleural_spaces():
    f = extract_findings("The pleural spaces are clear.")
    assert (f["pleural_effusion"].presence, f["pneumothorax"].presence) == ("absent", "absent")


def test_an_explanation_takes_the_side_of_what_it_explains():
    f = extract_findings("Hazy left basilar opacity could reflect layering pleural fluid.")
    assert (f["pleural_effusion"].presence, f["pleural_effusion"].laterality) == ("uncertain", "left")
    assert extract_findings("Right lower lobe consolidation, concerning for pneumonia.")["pneumonia"].laterality == "right"


@pytest.mark.parametrize("text", ["Borderline cardiomegaly.", "Borderline heart size.",
                                  "Prominent cardiac silhouette.", "The heart is possibly enlarged."])
def test_hedged_heart_size(text):
    assert presence(text, "cardiomegaly") == "uncertain"


# ---------------------------------------------------------------- resolution and change

@pytest.mark.parametrize("text", [
    "The right pneumothorax has resolved.",
    "Interval resolution of the right pneumothorax.",
    "Resolved right pneumothorax.",
    "The right pneumothorax is no longer seen.",
    "Complete resolution of the right pneumothorax.",
])
def test_resolution_means_absent(text):
    assert presence(text, "pneumothorax") == "absent"


@pytest.mark.parametrize("text", [
    "Stable right pneumothorax.",
    "Unchanged right pneumothorax.",
    "The right pneumothorax has improved but persists.",
    "Decreased right pneumothorax.",
    "Increased right pneumothorax.",
    "Persistent right pneumothorax.",
    "The right pneumothorax has nearly resolved.",
    "Partial resolution of the right pneumothorax.",
    "Resolving right pneumothorax.",
    "The right pneumothorax is again seen.",
])
def test_change_words_keep_the_finding_present(text):
    assert presence(text, "pneumothorax") == "present"


def test_device_removal_means_absent():
    assert presence("The endotracheal tube has been removed.", "support_devices") == "absent"
    assert presence("Interval removal of the right chest tube.", "support_devices") == "absent"
    assert presence("Endotracheal tube 4 cm above the carina.", "support_devices") == "present"


# ---------------------------------------------------------------- synonyms and exclusions

@pytest.mark.parametrize("text, name", [
    ("Enlarged cardiac silhouette.", "cardiomegaly"),
    ("The heart is enlarged.", "cardiomegaly"),
    ("Cardiac enlargement.", "cardiomegaly"),
    ("Left lower lobe collapse.", "atelectasis"),
    ("Volume loss at the left base.", "atelectasis"),
    ("Left hydropneumothorax.", "pneumothorax"),
    ("Left hydropneumothorax.", "pleural_effusion"),
    ("Findings consistent with congestive heart failure.", "edema"),
    ("Blunting of the left costophrenic angle.", "pleural_effusion"),
    ("Airspace disease in the right lower lobe.", "lung_opacity"),
    ("Consolidative opacity in the right lower lobe.", "consolidation"),
    ("Spiculated mass in the right upper lobe.", "nodule_or_mass"),
    ("Healed left rib fractures.", "fracture"),
    ("Right internal jugular central venous catheter.", "support_devices"),
    ("Tiny right apical PTX.", "pneumothorax"),
])
def test_synonyms(text, name):
    assert presence(text, name) == "present"


@pytest.mark.parametrize("text", ["Small pericardial effusion.", "Soft tissue edema of the chest wall.",
                                  "Mass effect on the trachea.", "Vertebral body collapse at T12."])
def test_lookalikes_are_not_lung_findings(text):
    f = extract_findings(text)
    assert {m.name for m in f.mentioned()} <= {"fracture"}


@pytest.mark.parametrize("text, name", [
    ("Heart size is normal.", "cardiomegaly"),
    ("The cardiomediastinal silhouette is within normal limits.", "cardiomegaly"),
    ("Heart size is at the upper limits of normal.", "cardiomegaly"),
    ("The lungs are clear.", "consolidation"),
    ("Costophrenic angles are sharp.", "pleural_effusion"),
])
def test_normal_statements_mean_absent(text, name):
    assert presence(text, name) == "absent"


@pytest.mark.parametrize("text", ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality.",
                                  "Normal chest radiograph.", "No active disease."])
def test_no_acute_finding(text):
    f = extract_findings(text)
    assert f["no_acute_finding"].presence == "present"
    assert [m.name for m in f.mentioned()] == ["no_acute_finding"]


# ---------------------------------------------------------------- laterality and severity

@pytest.mark.parametrize("text, side, severity", [
    ("Small left pleural effusion.", "left", "small"),
    ("Large right-sided pleural effusion.", "right", "large"),
    ("Moderate bilateral pleural effusions.", "bilateral", "moderate"),
    ("Pleural effusion on the left.", "left", None),
    ("The left pleural effusion is small.", "left", "small"),
    ("Small to moderate right pleural effusion.", "right", "small-to-moderate"),
    ("Trace left effusion. Small right effusion.", "bilateral", "trace"),
    ("Markedly improved left pleural effusion.", "left", None),
])
def test_laterality_and_severity(text, side, severity):
    f = extract_findings(text)["pleural_effusion"]
    assert (f.laterality, f.severity) == (side, severity)


@pytest.mark.parametrize("text, sides", [
    ("Atelectasis and pneumonia at the left base.", {"atelectasis": "left", "pneumonia": "left"}),
    ("Left lower lobe atelectasis and pneumonia.", {"atelectasis": "left", "pneumonia": "left"}),
    ("Atelectasis or pneumonia at the left base.", {"atelectasis": "left", "pneumonia": "left"}),
    ("Right lower lobe consolidation and/or atelectasis.", {"consolidation": "right", "atelectasis": "right"}),
    # a side inside a later finding's own phrase is that finding's only
    ("Pulmonary edema and left pleural effusion.", {"edema": None, "pleural_effusion": "left"}),
    ("Right pleural effusion with left lower lobe atelectasis and pneumonia.",
     {"pleural_effusion": "right", "atelectasis": "left", "pneumonia": "left"}),
    ("Left effusion and there is atelectasis.", {"pleural_effusion": "left", "atelectasis": None}),
])
def test_coordinated_findings_share_a_side_stated_once(text, sides):
    f = extract_findings(text)
    assert {name: f[name].laterality for name in sides} == sides


@pytest.mark.parametrize("text", [
    "Endotracheal tube terminates 3 cm above the carina. Right internal jugular line tip in the SVC.",
    "Endotracheal tube terminates 3 cm above the carina, and a right internal jugular line ends in the SVC.",
])
def test_support_devices_side_is_the_quoted_devices(text):
    f = extract_findings(text)["support_devices"]
    assert f.evidence.startswith("Endotracheal tube") and f.laterality is None
    assert extract_findings("Right internal jugular line tip in the SVC.")["support_devices"].laterality == "right"


def test_evidence_is_a_short_phrase_around_the_mention_when_the_sentence_is_long():
    # an unpunctuated report is one "sentence": the evidence is capped, on word boundaries
    text = ("heart size normal mediastinum normal lungs clear of consolidation " * 12
            + "there is a small left pleural effusion " + "no acute osseous abnormality seen " * 12)
    f = extract_findings(text)
    effusion = f["pleural_effusion"]
    assert (effusion.presence, effusion.laterality, effusion.severity) == ("present", "left", "small")
    a, b = effusion.span
    assert text[a:b] == effusion.evidence and len(effusion.evidence) <= EVIDENCE_MAX_CHARS
    assert "small left pleural effusion" in effusion.evidence
    assert (a == 0 or text[a - 1] == " ") and (b == len(text) or text[b] == " ")   # whole words
    assert effusion.evidence == effusion.evidence.strip()
    for finding in f.mentioned():
        assert len(finding.evidence) <= EVIDENCE_MAX_CHARS
        assert text[finding.span[0]:finding.span[1]] == finding.evidence
    short = "Small left pleural effusion."          # a sentence under the cap stays whole
    assert extract_findings(short)["pleural_effusion"].evidence == short


def test_cardiomegaly_has_severity_not_side():
    f = extract_findings("Heart size is mildly enlarged, left ventricular contour.")["cardiomegaly"]
    assert (f.presence, f.laterality, f.severity) == ("present", None, "mild")


def test_absent_findings_carry_no_side_or_severity():
    f = extract_findings("No large left pleural effusion.")["pleural_effusion"]
    assert (f.presence, f.laterality, f.severity) == ("absent", None, None)


# ---------------------------------------------------------------- sections, sentences, combining

def test_indication_and_history_are_not_read():
    text = ("INDICATION: Rule out pneumothorax.\nHISTORY: Pneumonia.\nCOMPARISON: Pleural effusion 2020.\n"
            "FINDINGS: Heart size is normal.")
    f = extract_findings(text)
    assert [m.name for m in f.mentioned()] == ["cardiomegaly"]


def test_present_beats_uncertain_beats_absent_and_says_which_sentence():
    text = "FINDINGS: No pleural effusion. Possible small left effusion.\nIMPRESSION: Small left pleural effusion."
    f = extract_findings(text)["pleural_effusion"]
    assert f.presence == "present"
    assert f.evidence == "Small left pleural effusion."
    assert f.span == (text.rindex("Small left pleural"), len(text))
    text2 = "No pleural effusion. Possible small left effusion."
    f2 = extract_findings(text2)["pleural_effusion"]
    assert (f2.presence, f2.evidence) == ("uncertain", "Possible small left effusion.")


def test_evidence_is_the_sentence_and_span_indexes_the_input():
    text = "  The heart is enlarged.\n\nThere is no pneumothorax.  Lungs clear.  "
    f = extract_findings(text)
    for name, sentence in (("cardiomegaly", "The heart is enlarged."),
                           ("pneumothorax", "There is no pneumothorax.")):
        a, b = f[name].span
        assert text[a:b] == f[name].evidence == sentence


def test_hard_wrapped_lines_stay_one_sentence_and_decimals_do_not_split():
    text = "There is no pleural\neffusion. A 1.5 cm nodule in the left upper lobe vs. a granuloma."
    f = extract_findings(text)
    assert f["pleural_effusion"].evidence == "There is no pleural\neffusion."
    assert f["nodule_or_mass"].evidence == "A 1.5 cm nodule in the left upper lobe vs. a granuloma."


def test_numbered_impression_items_are_sentences():
    f = extract_findings("IMPRESSION:\n1. No pneumothorax\n2. Small right effusion")
    assert (f["pneumothorax"].presence, f["pleural_effusion"].presence) == ("absent", "present")
    assert f["pleural_effusion"].evidence == "Small right effusion"


# ---------------------------------------------------------------- value types and errors

def test_every_finding_is_reported_in_order():
    f = extract_findings("")
    assert [x.name for x in f] == list(FINDING_NAMES)
    assert f.mentioned() == [] and f.present() == []
    assert all(x == Finding(x.name) for x in f)
    assert PRIMARY_FINDINGS == FINDING_NAMES[:6]


def test_findings_json_round_trip():
    f = extract_findings("Small left pleural effusion. No pneumothorax. Possible pneumonia.")
    d = f.to_json()
    assert d["pleural_effusion"] == {"presence": "present", "evidence": "Small left pleural effusion.",
                                     "span": [0, 28], "laterality": "left", "severity": "small"}
    assert Findings.from_json(d) == f
    assert [x.name for x in f.present()] == ["pleural_effusion"]
    assert [x.name for x in f.mentioned()] == ["pleural_effusion", "pneumothorax", "pneumonia"]


def test_unknown_finding_name_raises():
    with pytest.raises(KeyError, match=r"unknown finding 'effusion'; known: atelectasis, cardiomegaly"):
        extract_findings("No effusion.")["effusion"]


@pytest.mark.parametrize("value, type_name", [(b"No pneumothorax.", "bytes"), (None, "NoneType")])
def test_non_text_input_raises(value, type_name):
    with pytest.raises(TypeError, match=rf"extract_findings needs the report as str, got {type_name}; "
                                        r"decode bytes first"):
        extract_findings(value)
