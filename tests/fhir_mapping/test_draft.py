"""FHIR out: the draft Bundle's content, its self-contained DiagnosticReport, and DraftInputs' checks."""
from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest

from prompts.findings import Finding

from fhir_mapping import (DISCLAIMER, DraftInputs, FhirMappingError, build_draft, patient_reference,
                          read_context, read_order)
from tests.fhir_mapping.samples import (MRN, PATIENT, PATIENT_NAME, SERVICE_REQUEST, STUDY_UID, draft_inputs,
                                        findings, order_info)

SNOMED = "http://snomed.info/sct"


def report_of(bundle: dict) -> dict:
    return bundle["entry"][0]["resource"]


def by_type(bundle: dict, resource_type: str) -> tuple[str, dict]:
    entry = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type)
    return entry["fullUrl"], entry["resource"]


def contained(report: dict, id_: str) -> dict:
    return next(r for r in report["contained"] if r["id"] == id_)


def local_references(value) -> list[str]:
    """Every Reference.reference string inside a JSON value."""
    found = []
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            found.append(value["reference"])
        for item in value.values():
            found += local_references(item)
    elif isinstance(value, list):
        for item in value:
            found += local_references(item)
    return found


@pytest.fixture(scope="module")
def full_bundle() -> dict:
    return build_draft(draft_inputs())


# --- the Bundle -----------------------------------------------------------------------------------------
def test_bundle_shape(full_bundle):
    assert full_bundle["resourceType"] == "Bundle"
    assert full_bundle["type"] == "collection"
    assert [e["resource"]["resourceType"] for e in full_bundle["entry"]] == ["DiagnosticReport", "Device", "Provenance"]
    urls = [e["fullUrl"] for e in full_bundle["entry"]]
    assert all(u.startswith("urn:uuid:") for u in urls) and len(set(urls)) == 3
    assert all("id" not in e["resource"] for e in full_bundle["entry"])     # the server assigns ids


def test_every_output_is_valid_r4(full_bundle, assert_valid_r4):
    assert_valid_r4(full_bundle)
    assert_valid_r4(report_of(full_bundle))      # what the CDS `create` action carries, alone


def test_provenance_points_at_report_and_device(full_bundle):
    report_url, _ = by_type(full_bundle, "DiagnosticReport")
    device_url, _ = by_type(full_bundle, "Device")
    _, provenance = by_type(full_bundle, "Provenance")
    assert provenance["target"] == [{"reference": report_url}]
    assert provenance["recorded"] == "2024-05-02T09:30:15Z"
    assert provenance["reason"][0]["coding"][0]["code"] == "AIAST"
    assert provenance["activity"]["coding"][0]["code"] == "CREATE"
    agent = provenance["agent"][0]
    assert agent["who"]["reference"] == device_url
    assert agent["type"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author",
        "display": "Author"}
    assert agent["role"][0]["coding"][0]["code"] == "Artificial-Intelligence"
    assert provenance["entity"][0]["what"]["identifier"]["value"] == f"urn:oid:{STUDY_UID}"


def test_device_names_model_revision_quantization_and_prompt(full_bundle):
    _, device = by_type(full_bundle, "Device")
    assert device["type"]["coding"][0] == {
        "system": "http://hl7.org/fhir/uv/aitransparency/CodeSystem/AIdeviceTypeCS",
        "code": "Artificial-Intelligence", "display": "All kinds of Artificial Intelligence"}
    assert device["deviceName"] == [{"name": "ECOFRI/CXR-LLAVA-v2", "type": "model-name"}]
    assert {v["type"]["text"]: v["value"] for v in device["version"]} == {
        "model": "ECOFRI/CXR-LLAVA-v2", "revision": "0123abcd", "quantization": "4bit", "dtype": "bfloat16",
        "prompt": "report_context.v1"}
    report = report_of(full_bundle)
    assert {k: v for k, v in contained(report, "ai-device").items() if k != "id"} == device


def test_device_without_revision_or_quantization_says_so():
    model = {"name": "/models/cxr", "revision": None, "dtype": None, "quantization": None,
             "prompt_id": "report", "prompt_version": "v1"}
    _, device = by_type(build_draft(draft_inputs(model=model)), "Device")
    assert {v["type"]["text"]: v["value"] for v in device["version"]} == {
        "model": "/models/cxr", "revision": "unpinned", "quantization": "none", "prompt": "report.v1"}


# --- the DiagnosticReport ---------------------------------------------------------------------------------
def test_report_header(full_bundle):
    report = report_of(full_bundle)
    assert report["status"] == "preliminary"
    assert report["meta"]["security"] == [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                                           "code": "AIAST", "display": "Artificial Intelligence asserted"}]
    assert report["category"] == [{"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"},
        {"system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology"}]}]
    assert report["subject"] == {"reference": "Patient/pat-42"}
    assert report["encounter"] == {"reference": "Encounter/enc-9"}
    assert report["basedOn"] == [{"reference": "ServiceRequest/sr-cxr-1"}]
    assert report["effectiveDateTime"] == "2024-05-02"
    assert report["issued"] == "2024-05-02T09:30:15Z"          # to the second
    assert report["imagingStudy"] == [{"type": "ImagingStudy",
                                       "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"},
                                       "display": f"Study {STUDY_UID}"}]
    acsn = report["identifier"][0]
    assert acsn["value"] == "ACC-2024-0001"
    assert acsn["type"]["coding"][0]["code"] == "ACSN"


def test_report_code_comes_from_the_order(full_bundle):
    assert report_of(full_bundle)["code"] == {"coding": [
        {"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"},
        {"system": "http://www.ama-assn.org/go/cpt", "code": "71046"}], "text": "XR chest PA and lateral"}


@pytest.mark.parametrize("order, view_count, code, text", [
    (None, None, "36554-4", "XR Chest Single view"),
    (None, 1, "36554-4", "XR Chest Single view"),
    (None, 2, "36643-5", "XR Chest 2 Views"),
    (order_info(codings=(), text="Chest X-ray portable"), 3, "36643-5", "Chest X-ray portable"),
])
def test_report_code_fallback_by_view_count(order, view_count, code, text):
    report = report_of(build_draft(draft_inputs(order=order, view_count=view_count)))
    assert report["code"]["coding"][0]["system"] == "http://loinc.org"
    assert report["code"]["coding"][0]["code"] == code
    assert report["code"]["text"] == text


@pytest.mark.parametrize("order", [
    None,
    order_info(id=None),
    order_info(resource_type="ProcedureRequest"),      # an STU3 id is not an R4 ServiceRequest id
    order_info(id="urn:uuid:2b7c"),                    # Bundle-local; read_order already drops these
])
def test_based_on_only_for_a_stable_service_request_id(order):
    assert "basedOn" not in report_of(build_draft(draft_inputs(order=order)))


def test_conclusion_starts_with_the_disclaimer(full_bundle):
    conclusion = report_of(full_bundle)["conclusion"]
    assert conclusion.startswith("AI-generated draft for clinician review — not a final report.")
    assert DISCLAIMER == "AI-generated draft for clinician review — not a final report."
    assert conclusion.splitlines()[1:4] == [
        "Present: pulmonary edema (bilateral, moderate); pleural effusion (left, small).",
        "Uncertain: consolidation (right).",
        "Absent: cardiomegaly; pneumothorax.",
    ]
    assert conclusion.splitlines()[-1] == ("Read from one image (PA view) by ECOFRI/CXR-LLAVA-v2 (revision 0123abcd, "
                                           "4bit quantization, bfloat16); prompt report_context.v1.")


def test_conclusion_codes_are_the_present_findings(full_bundle):
    codes = [c["coding"][0]["code"] for c in report_of(full_bundle)["conclusionCode"]]
    assert codes == ["19242006", "60046008"]          # edema, pleural effusion (FINDING_NAMES order)


def test_presented_form_is_the_labelled_full_report(full_bundle):
    form = report_of(full_bundle)["presentedForm"][0]
    assert form["contentType"] == "text/plain; charset=utf-8"
    assert form["title"] == "AI draft chest radiograph report (not reviewed)"
    text = base64.b64decode(form["data"]).decode("utf-8")
    assert text.startswith(DISCLAIMER + "\n")
    assert draft_inputs().report_text in text
    assert "prompt report_context.v1" in text


# --- Observations -------------------------------------------------------------------------------------------
def test_one_observation_per_mentioned_or_scored_finding(full_bundle):
    report = report_of(full_bundle)
    observations = [r for r in report["contained"] if r["resourceType"] == "Observation"]
    assert [o["id"] for o in observations] == [        # mentioned ones first, then scored-only ones
        "obs-cardiomegaly", "obs-consolidation", "obs-edema", "obs-pleural-effusion", "obs-pneumothorax",
        "obs-atelectasis"]
    assert [r["reference"] for r in report["result"]] == [f"#{o['id']}" for o in observations]
    for o in observations:
        assert o["status"] == "preliminary"
        assert "meta" not in o             # dom-5: no security labels on contained resources
        assert o["device"] == {"reference": "#ai-device"}
        assert o["subject"] == {"reference": "Patient/pat-42"}
        assert o["code"]["coding"][0]["system"] == SNOMED


@pytest.mark.parametrize("obs_id, value_code", [
    ("obs-pleural-effusion", "52101004"),     # present
    ("obs-pneumothorax", "2667000"),          # absent
    ("obs-consolidation", "373068000"),       # uncertain -> Undetermined
])
def test_presence_values(full_bundle, obs_id, value_code):
    value = contained(report_of(full_bundle), obs_id)["valueCodeableConcept"]
    assert value["coding"][0] == {**value["coding"][0], "system": SNOMED, "code": value_code}


def test_laterality_evidence_severity_and_score(full_bundle):
    report = report_of(full_bundle)
    effusion = contained(report, "obs-pleural-effusion")
    assert effusion["bodySite"] == {"text": "left hemithorax"}
    assert effusion["note"] == [{"text": 'Evidence in the AI report: "Small left pleural effusion."'}]
    severity, score = effusion["component"]
    assert severity["code"]["coding"][0]["code"] == "246112005"
    assert severity["valueCodeableConcept"] == {"text": "small"}          # no SNOMED code for "small"
    assert score["valueQuantity"] == {"value": 0.9123, "unit": "probability",
                                      "system": "http://unitsofmeasure.org", "code": "1"}
    edema = contained(report, "obs-edema")
    assert edema["bodySite"]["coding"][0]["code"] == "74101002"           # both lungs
    assert edema["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == "6736007"   # moderate
    consolidation = contained(report, "obs-consolidation")
    assert consolidation["bodySite"] == {"coding": [{"system": SNOMED, "code": "3341006",
                                                     "display": "Right lung structure"}], "text": "right lung"}
    assert "component" not in consolidation and "bodySite" not in contained(report, "obs-cardiomegaly")


def test_a_scored_but_unmentioned_finding_gets_its_probability_and_no_presence(full_bundle):
    # atelectasis is scored (0.2) but not mentioned in the report
    obs = contained(report_of(full_bundle), "obs-atelectasis")
    assert "valueCodeableConcept" not in obs
    assert obs["dataAbsentReason"]["text"] == "Not mentioned in the AI-generated report"
    assert obs["component"][-1]["valueQuantity"]["value"] == 0.2
    # ...and it is not a result the report states: the conclusion does not name it
    assert "telectasis" not in report_of(full_bundle)["conclusion"]


def test_no_acute_finding_is_a_conclusion_code_not_an_observation():
    inputs = draft_inputs(findings=findings(no_acute_finding="present", pneumothorax="absent"), scores=None)
    report = report_of(build_draft(inputs))
    assert [r["id"] for r in report["contained"]] == ["ai-device", "obs-pneumothorax"]
    assert report["conclusionCode"][0]["coding"][0]["code"] == "281900007"
    assert "No acute cardiopulmonary abnormality." in report["conclusion"]


def test_nothing_mentioned():
    report = report_of(build_draft(draft_inputs(findings=findings(), scores=None)))
    assert [r["id"] for r in report["contained"]] == ["ai-device"]
    assert "result" not in report and "conclusionCode" not in report
    assert "No coded findings could be read" in report["conclusion"]
    assert report["extension"][0]["valueReference"] == {"reference": "#ai-device"}   # still referenced


def test_the_report_is_self_contained(full_bundle):
    report = report_of(full_bundle)
    contained_ids = {r["id"] for r in report["contained"]}
    refs = local_references(report)
    for ref in refs:
        assert not ref.startswith("urn:"), f"{ref} points into the Bundle; a `create` action carries the report alone"
        if ref.startswith("#"):
            assert ref[1:] in contained_ids
    assert contained_ids <= {ref[1:] for ref in refs if ref.startswith("#")}   # FHIR dom-3


# --- identifiers and privacy --------------------------------------------------------------------------------
def test_no_patient_identifiers_from_ehr_resources():
    order = read_order(SERVICE_REQUEST)
    read_context(patient=PATIENT, service_request=SERVICE_REQUEST, today=date(2024, 5, 2))
    bundle = build_draft(draft_inputs(order=order, patient_reference=patient_reference(PATIENT)))
    blob = json.dumps(bundle)
    for identifier in (MRN, PATIENT_NAME, "1961-04-02", "999-99-9999", "PLAC-77"):
        assert identifier not in blob


def test_deterministic_for_the_same_draft_id():
    assert build_draft(draft_inputs()) == build_draft(draft_inputs())
    other = build_draft(draft_inputs(draft_id="another"))
    assert other["entry"][0]["fullUrl"] != build_draft(draft_inputs())["entry"][0]["fullUrl"]


@pytest.mark.parametrize("issued, expected", [
    (datetime(2024, 5, 2, 11, 30, 15, 999999, tzinfo=timezone(timedelta(hours=2))), "2024-05-02T11:30:15+02:00"),
    (datetime(2024, 5, 2, 9, 30, tzinfo=timezone.utc), "2024-05-02T09:30:00Z"),
])
def test_issued_is_an_instant_to_the_second(issued, expected, assert_valid_r4):
    bundle = build_draft(draft_inputs(issued=issued))
    assert report_of(bundle)["issued"] == expected
    assert_valid_r4(bundle)


def test_study_datetime_with_zone():
    report = report_of(build_draft(draft_inputs(study_date=datetime(2024, 5, 2, 8, 0, tzinfo=timezone.utc))))
    assert report["effectiveDateTime"] == "2024-05-02T08:00:00Z"


def test_minimal_inputs(assert_valid_r4):
    inputs = draft_inputs(accession_number=None, study_date=None, view_position=None, order=None,
                          patient_reference=None, encounter_reference=None, scores=None)
    bundle = build_draft(inputs)
    report = report_of(bundle)
    for absent in ("subject", "encounter", "basedOn", "effectiveDateTime"):
        assert absent not in report
    assert [i["system"] for i in report["identifier"]] == ["urn:ietf:rfc:3986"]
    assert_valid_r4(bundle)


def test_report_text_with_non_ascii_and_markup(assert_valid_r4):
    text = "Épanchement pleural gauche. <b>No</b> pneumothorax — ✓\n\n"
    bundle = build_draft(draft_inputs(report_text=text))
    data = report_of(bundle)["presentedForm"][0]["data"]
    assert text.strip() in base64.b64decode(data).decode("utf-8")
    assert_valid_r4(bundle)


# --- DraftInputs checks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"study_instance_uid": "1.2.abc"}, "study_instance_uid '1.2.abc' is not a DICOM UID"),
    ({"study_instance_uid": "1.02.3"}, "study_instance_uid '1.02.3' is not a DICOM UID"),
    ({"study_instance_uid": "1." + "2" * 70}, "is not a DICOM UID \\(digits and dots, at most 64 characters\\)"),
    ({"issued": datetime(2024, 5, 2, 9, 30)}, "issued .* must be a timezone-aware datetime"),
    ({"issued": "2024-05-02T09:30:00Z"}, "issued '2024-05-02T09:30:00Z' must be a timezone-aware datetime"),
    ({"patient_reference": "pat-42"}, "patient_reference 'pat-42' is not of the form 'Patient/<id>'"),
    ({"patient_reference": "urn:uuid:1"}, "patient_reference 'urn:uuid:1' is not of the form 'Patient/<id>'"),
    ({"encounter_reference": "Patient/1"}, "encounter_reference 'Patient/1' is not of the form 'Encounter/<id>'"),
    ({"model": {"revision": "x"}}, "model must be the generation's identity dict with at least a 'name'"),
    ({"model": "cxr-llava"}, "model must be the generation's identity dict"),
    ({"draft_id": " "}, "draft_id ' ' must be a non-empty string"),
    ({"scores": {"pneumothorax": 1.5}}, "score for pneumothorax is 1.5; expected a probability in \\[0, 1\\]"),
    ({"scores": {"pneumothorax": "high"}}, "score for pneumothorax is 'high'"),
    ({"scores": {"tumour": 0.5}}, "scores has unknown finding 'tumour'; known: atelectasis"),
    ({"view_count": 0}, "view_count 0 must be a positive integer or None"),
    ({"findings": {"pneumothorax": "present"}}, "findings must be prompts.Findings, got dict"),
    ({"study_date": "2024-05-02"}, "study_date must be a datetime.date, got str"),
    ({"report_text": None}, "report_text must be a string, got NoneType"),
])
def test_draft_inputs_are_checked(overrides, message):
    with pytest.raises(FhirMappingError, match=message) as info:
        draft_inputs(**overrides)
    assert (info.value.code, info.value.status) == ("invalid-draft-input", 500)


def test_build_draft_takes_draft_inputs():
    with pytest.raises(FhirMappingError, match="build_draft takes DraftInputs, got dict"):
        build_draft({"report_text": "x"})


def test_replace_is_checked_too():
    with pytest.raises(FhirMappingError, match="is not a DICOM UID"):
        replace(draft_inputs(), study_instance_uid="x")


def test_severity_not_in_table_is_text(assert_valid_r4):
    effusion = Finding("pleural_effusion", "present", "Large right effusion.", None, "right", "large")
    bundle = build_draft(draft_inputs(findings=findings(pleural_effusion=effusion), scores=None))
    obs = contained(report_of(bundle), "obs-pleural-effusion")
    assert obs["component"][0]["valueCodeableConcept"] == {"text": "large"}
    assert_valid_r4(bundle)


def test_draft_inputs_is_frozen():
    inputs = draft_inputs()
    with pytest.raises(AttributeError):
        inputs.draft_id = "changed"
    assert isinstance(inputs, DraftInputs)


def test_narrative_is_escaped_xhtml_of_the_conclusion():
    from xml.etree import ElementTree

    effusion = Finding("pleural_effusion", "present", "x", None, None, "<script>alert(1)</script> & more")
    report = report_of(build_draft(draft_inputs(findings=findings(pleural_effusion=effusion), scores=None)))
    assert report["text"]["status"] == "generated"
    div = ElementTree.fromstring(report["text"]["div"])          # well-formed XML
    assert div.tag == "{http://www.w3.org/1999/xhtml}div"
    assert [p.text for p in div] == report["conclusion"].splitlines()
    assert "<script>" not in report["text"]["div"]


# --- free text that is not a valid FHIR string ------------------------------------------------------------
# What the tiny random model writes (\x0b, \x1f), plus NUL, a lone surrogate, NBSP, a line separator
# and a noncharacter: the R4B models accept most of these, HL7's R4 schema and UTF-8 do not.
DIRTY_REPORT = ("FINDINGS: Small left pleural\x0beffusion.\x1f No pneumo\x00thorax. \ud800Mild\xa0interstitial "
                "edema.\u2028IMPRESSION: Small effusion\ufffe.")


def test_model_text_with_control_characters_is_valid_r4(assert_valid_r4):
    from xml.etree import ElementTree

    from prompts.findings import extract_findings

    labeled = extract_findings(DIRTY_REPORT)          # evidence quotes the raw text, control characters and all
    assert "\x0b" in labeled["pleural_effusion"].evidence and "\ud800" in labeled["edema"].evidence
    bundle = build_draft(draft_inputs(report_text=DIRTY_REPORT, findings=labeled, scores=None))
    assert_valid_r4(bundle)
    assert_valid_r4(report_of(bundle))
    report = report_of(bundle)
    notes = {o["id"]: o["note"][0]["text"] for o in report["contained"] if o["resourceType"] == "Observation"}
    assert notes == {"obs-pleural-effusion": 'Evidence in the AI report: "Small left pleural\neffusion."',
                     "obs-edema": 'Evidence in the AI report: "\ufffdMild interstitial edema."'}
    text = base64.b64decode(report["presentedForm"][0]["data"]).decode("utf-8")
    assert ("FINDINGS: Small left pleural\neffusion.  No pneumothorax. \ufffdMild interstitial edema.\n"
            "IMPRESSION: Small effusion.") in text
    ElementTree.fromstring(report["text"]["div"])      # still well-formed XML
    json.dumps(bundle, ensure_ascii=False).encode("utf-8")     # no lone surrogate left anywhere


def test_ehr_and_config_text_is_cleaned_too(assert_valid_r4):
    order = order_info(text="XR\xa0chest\x00 PA", codings=(("http://loinc.org", "36643-5", "XR Chest\x1f2 Views"),))
    effusion = Finding("pleural_effusion", "present", "\x00\x01", None, "left", "small\u2009to\u2009moderate")
    inputs = draft_inputs(order=order, accession_number="ACC\x1e1", view_position="PA\x00",
                          model={"name": "tiny\x1fmodel", "revision": None, "prompt_id": "p", "prompt_version": "v1"},
                          findings=findings(pleural_effusion=effusion), scores=None)
    bundle = build_draft(inputs)
    assert_valid_r4(bundle)
    report = report_of(bundle)
    assert report["code"]["text"] == "XR chest PA"
    assert report["code"]["coding"][0]["display"] == "XR Chest 2 Views"
    assert report["identifier"][0]["value"] == "ACC\n1"
    obs = contained(report, "obs-pleural-effusion")
    assert "note" not in obs                                         # nothing readable left of the evidence
    assert obs["component"][0]["valueCodeableConcept"] == {"text": "small to moderate"}
    assert by_type(bundle, "Device")[1]["modelNumber"] == "tiny model"
