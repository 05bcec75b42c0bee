"""Checklist items 9-19, 44 and 63, the section 7.2 examples, and issue 2's bad-input answers."""
from __future__ import annotations

import json

import pytest

from cds_hooks.services import candidate_orders, is_chest_xray, parse_request, SERVICES_BY_ID
from cds_hooks.settings import DEFAULT_CXR_CODES
from cds_hooks.errors import BadRequest
from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import PRIOR_UID, cxr_order, hook_request, patient
from tests.cds_hooks.review_links import link_target, review_page

SIGN = "/cds-services/cxr-ai-order-sign"
SELECT = "/cds-services/cxr-ai-order-select"


def _diagnostics(r) -> str:
    body = r.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"   # 43
    return body["issue"][0]["diagnostics"]


@pytest.mark.parametrize("data, message", [
    ("{not json", "request body is not a JSON object"),
    ("[1, 2]", "request body is not a JSON object"),
    (json.dumps({"hookInstance": "x", "context": {}}), "missing hook, context"),
    (json.dumps({"hook": "order-sign", "context": {"patientId": "p"}}), "missing hookInstance"),
    (json.dumps({"hook": "order-select", "hookInstance": "x", "context": {"patientId": "p"}}),
     "serves hook 'order-sign', not 'order-select'"),                                              # 10
    (json.dumps({"hook": "order-sign", "hookInstance": "x", "context": {"userId": "Practitioner/1"}}),
     "order-sign context is missing patientId, draftOrders"),
    (json.dumps({"hook": "order-sign", "hookInstance": "x", "fhirAuthorization": {"access_token": "t"},
                 "context": {"userId": "u", "patientId": "p", "draftOrders": {}}}),
     "fhirAuthorization is present but fhirServer is missing"),                                   # 11
    (json.dumps({"hook": "order-sign", "hookInstance": "x", "fhirServer": "ehr",
                 "context": {"userId": "u", "patientId": "p", "draftOrders": {}}}),
     "fhirServer must be an absolute URL"),
    (json.dumps({"hook": "order-sign", "hookInstance": "x", "prefetch": [],
                 "context": {"userId": "u", "patientId": "p", "draftOrders": {}}}),
     "prefetch must be an object"),
])
def test_bad_requests_are_400_operation_outcome(client, data, message):
    r = client.post(SIGN, data=data, content_type="application/json")                             # 9
    assert r.status_code == 400 and r.mimetype == "application/json"
    assert message in _diagnostics(r)


def test_parse_request_errors_directly():
    with pytest.raises(BadRequest, match="fhirAuthorization must be an object with an access_token"):
        parse_request(SERVICES_BY_ID["cxr-ai-order-sign"], {
            "hook": "order-sign", "hookInstance": "x", "fhirServer": "https://e", "fhirAuthorization": "t",
            "context": {"userId": "u", "patientId": "p", "draftOrders": {}}})
    for bad in (7, "p/../Patient/q", "x" * 65, ""):
        with pytest.raises(BadRequest, match=r"context.patientId must be a bare Patient.id|missing patientId"):
            parse_request(SERVICES_BY_ID["cxr-ai-order-sign"], {
                "hook": "order-sign", "hookInstance": "x", "context": {"userId": "u", "patientId": bad,
                                                                       "draftOrders": {}}})
    with pytest.raises(BadRequest, match="context.encounterId must be a bare Encounter.id"):
        parse_request(SERVICES_BY_ID["cxr-ai-order-sign"], {
            "hook": "order-sign", "hookInstance": "x",
            "context": {"userId": "u", "patientId": "p", "encounterId": ["e"], "draftOrders": {}}})
    with pytest.raises(BadRequest, match="hook and hookInstance must be strings and context an object"):
        parse_request(SERVICES_BY_ID["cxr-ai-order-sign"], {"hook": "order-sign", "hookInstance": "x", "context": [1]})


def test_charset_content_type_is_accepted(client):
    body = hook_request("order-sign", "p", [], prefetch={"patient": patient("p", "M")})
    r = client.post(SIGN, data=json.dumps(body), content_type="application/json;charset=utf-8")
    assert r.status_code == 200 and r.get_json() == {"cards": []}


def test_chest_xray_recognition():
    assert is_chest_xray(cxr_order("a", "p"), DEFAULT_CXR_CODES)
    assert is_chest_xray(cxr_order("a", "p", code=("http://loinc.org", "36643-5")), DEFAULT_CXR_CODES)
    assert not is_chest_xray(cxr_order("a", "p", code=("http://loinc.org", "58410-2")), DEFAULT_CXR_CODES)
    assert not is_chest_xray(cxr_order("a", "p", code=("http://snomed.info/sct", "71046")), DEFAULT_CXR_CODES)
    assert not is_chest_xray({"resourceType": "ServiceRequest", "code": {"coding": [{}]}}, DEFAULT_CXR_CODES)
    assert not is_chest_xray({"resourceType": "ServiceRequest"}, DEFAULT_CXR_CODES)
    # a configurable demo code (the sandbox offers CT codes only), with any system
    assert is_chest_xray(cxr_order("a", "p", code=("http://www.ama-assn.org/go/cpt", "71250")), ("71250",))


def test_order_select_evaluates_only_selections():
    orders = [cxr_order("sr-1", "p"), cxr_order("sr-2", "p")]
    select = SERVICES_BY_ID["cxr-ai-order-select"]
    req = parse_request(select, hook_request("order-select", "p", orders, selections=["ServiceRequest/sr-2"]))
    assert [o["id"] for o in candidate_orders(req)] == ["sr-2"]                                   # 14
    req = parse_request(select, hook_request("order-select", "p", orders,
                                              selections=["https://ehr/fhir/ServiceRequest/sr-1"]))
    assert [o["id"] for o in candidate_orders(req)] == ["sr-1"]
    req = parse_request(select, hook_request("order-select", "p", orders))                        # 15
    assert candidate_orders(req) == []
    sign = SERVICES_BY_ID["cxr-ai-order-sign"]
    orders[1]["status"] = "active"                                                                # 16
    req = parse_request(sign, hook_request("order-sign", "p", orders + [{"resourceType": "MedicationRequest"}]))
    assert [o["id"] for o in candidate_orders(req)] == ["sr-1", "sr-2"]


def test_unselected_chest_xray_gets_no_card(make_app):
    app = make_app()
    body = hook_request("order-select", "pat-77", [cxr_order("sr-1", "pat-77"), cxr_order("sr-2", "pat-77")],
                        selections=["MedicationRequest/mr-1"], prefetch={"patient": patient("pat-77", "MRN0077")})
    r = app.test_client().post(SELECT, json=body)
    assert r.status_code == 200 and r.get_json() == {"cards": []}                                 # 14
    del body["context"]["selections"]
    r = app.test_client().post(SELECT, json=body)
    assert r.status_code == 200 and r.get_json() == {"cards": []}                                 # 15
    assert app.generate.calls == 0


def test_example_a_order_select_with_partial_prefetch(make_app, examples):
    app = make_app(deadline_s=30)
    r = app.test_client().post(SELECT, json=examples["A"])
    assert r.status_code == 200
    cards = check_response(r.get_json())
    # no AccessionNumber on sr-cxr-1: the card is about pat-42's most recent radiograph, as a prior
    assert len(cards) == 1 and cards[0]["summary"].startswith("Prior chest X-ray 2026-11-28")
    assert "suggestions" not in cards[0] and cards[0]["indicator"] == "info"
    assert "PRIOR study from 2026-11-28" in cards[0]["detail"]


def test_example_b_order_sign_without_patient_is_412(client, examples):
    r = client.post(SIGN, json=examples["B"])
    assert r.status_code == 412
    assert "the Patient (Patient/{{context.patientId}}) is required" in _diagnostics(r)


def test_example_c_sandbox_pama_payload(client, examples):
    r = client.post(SELECT, json=examples["C"])                                                   # 18
    assert r.status_code == 200 and r.get_json() == {"cards": []}


def test_tolerant_of_unknown_fields_bundle_shapes_and_hook_instances(make_app):
    app = make_app(deadline_s=30)
    client = app.test_client()
    order = cxr_order("sr-1", "http://ehr.example.org/fhir/Patient/pat-77")                       # 17: absolute ref
    order["subject"] = {"reference": "http://ehr.example.org/fhir/Patient/pat-77"}
    plain = hook_request("order-sign", "pat-77", [order, {"resourceType": "NutritionOrder", "id": "n"}],
                         prefetch={"patient": patient("pat-77", "MRN0077")})
    noisy = json.loads(json.dumps(plain))
    noisy.update(user="Practitioner/x", patient="pat-77", redirect="http://x", extension={"a.b": 1})  # 13
    noisy["context"]["extension"] = {"com.example": True}
    noisy["hookInstance"] = "another-instance"                                                    # 19
    noisy["context"]["draftOrders"]["type"] = "collection"
    first, second = client.post(SIGN, json=plain), client.post(SIGN, json=noisy)
    assert first.status_code == second.status_code == 200
    strip = lambda cards: [{k: v for k, v in c.items() if k not in ("uuid", "links")} for c in cards]
    one, two = check_response(first.get_json()), check_response(second.get_json())
    assert strip(one) == strip(two) and len(one) == 1
    assert link_target(one[0]) == link_target(two[0])              # the same draft; one signed link per card
    assert PRIOR_UID in review_page(client, one[0])
    assert app.generate.calls == 1


def test_request_size_limit_is_413(make_app):
    client = make_app(max_request_bytes=4096).test_client()
    big = hook_request("order-sign", "p", [], prefetch={"patient": patient("p", "M"), "pad": "x" * 5000})
    r = client.post(SIGN, json=big)                                                                # 63
    assert r.status_code == 413 and "413" in _diagnostics(r)
    small = hook_request("order-sign", "p", [], prefetch={"patient": patient("p", "M"), "pad": "x" * 2000})
    assert client.post(SIGN, json=small).status_code == 200


def test_unknown_study_gives_no_card(client):
    body = hook_request("order-sign", "pat-0", [cxr_order("sr-1", "pat-0", accession="ACC-NOPE")],
                        prefetch={"patient": patient("pat-0", "MRN-NOPE")})
    r = client.post(SIGN, json=body)
    assert r.status_code == 200 and r.get_json() == {"cards": []}


def test_study_without_frontal_view_gets_an_explanatory_card(client):
    body = hook_request("order-sign", "pat-99", [cxr_order("sr-1", "pat-99", accession="ACC0099")],
                        prefetch={"patient": patient("pat-99", "MRN0099")})
    r = client.post(SIGN, json=body)
    assert r.status_code == 200
    (card,) = check_response(r.get_json())
    assert card["indicator"] == "info" and "no_frontal_radiograph" in card["summary"]
    assert "suggestions" not in card


def test_model_crash_gives_an_explanatory_card(make_app, engine):
    from tests.cds_hooks.conftest import CountingGenerate

    generate = CountingGenerate(engine)
    generate.fail = RuntimeError("CUDA error: device-side assert triggered")
    client = make_app(generate=generate, deadline_s=30).test_client()
    body = hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        prefetch={"patient": patient("pat-42", "MRN0042")})
    r = client.post(SIGN, json=body)                                                               # 44
    assert r.status_code == 200 and r.mimetype == "application/json"
    (card,) = check_response(r.get_json())
    assert card["summary"] == "No AI draft: the analysis failed (RuntimeError)"
    assert "CUDA" not in card["detail"]


def test_archive_down_gives_an_explanatory_card(make_app):
    from imaging import DicomWebSource

    source = DicomWebSource.from_url("http://127.0.0.1:9/dicom-web", timeout_s=1, retries=0)
    client = make_app(source=source).test_client()
    body = hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        prefetch={"patient": patient("pat-42", "MRN0042")})
    r = client.post(SIGN, json=body)
    assert r.status_code == 200
    (card,) = check_response(r.get_json())
    assert card["summary"].startswith("No AI draft: imaging problem (")
    assert "is unreachable" in card["detail"] and "check that the PACS is running" in card["detail"]


def _order_sign(draft_orders, **context) -> str:
    return json.dumps({"hook": "order-sign", "hookInstance": "x", "prefetch": {"patient": patient("p", "M")},
                       "context": {"userId": "u", "patientId": "p", "draftOrders": draft_orders, **context}})


@pytest.mark.parametrize("data, message", [
    # a non-list entry used to reach the worker and come back as an "analysis failed (TypeError)" card
    (_order_sign({"resourceType": "Bundle", "entry": 5}),
     "context.draftOrders.entry must be an array of Bundle entries, got a number"),
    (_order_sign({"resourceType": "Bundle", "entry": {"resource": {}}}),
     "context.draftOrders.entry must be an array of Bundle entries, got an object"),
    (_order_sign({"resourceType": "Bundle", "entry": ["sr-1"]}),
     "context.draftOrders.entry[0] must be an object whose resource is a FHIR resource"),
    (_order_sign({"resourceType": "Bundle", "entry": [{"resource": "ServiceRequest/sr-1"}]}),
     "context.draftOrders.entry[0] must be an object whose resource is a FHIR resource"),
    (_order_sign("ServiceRequest/sr-1"), "context.draftOrders must be a FHIR Bundle (a JSON object), got a string"),
    (_order_sign({"resourceType": "ServiceRequest", "id": "sr-1"}),
     "context.draftOrders must be a FHIR Bundle, not resourceType 'ServiceRequest'"),
])
def test_malformed_draft_orders_are_400(client, data, message):
    r = client.post(SIGN, data=data, content_type="application/json")
    assert r.status_code == 400
    assert message in _diagnostics(r)


def test_malformed_selections_are_400_and_an_order_free_bundle_gets_no_cards(client):
    body = json.loads(_order_sign({"resourceType": "Bundle", "entry": []}))
    body["hook"], body["context"]["selections"] = "order-select", "ServiceRequest/sr-1"
    r = client.post(SELECT, json=body)
    assert r.status_code == 400
    assert 'context.selections must be an array of strings such as "ServiceRequest/sr-1"' in _diagnostics(r)
    for bundle in ({"resourceType": "Bundle"}, {"resourceType": "Bundle", "entry": []}, {"entry": []}):
        r = client.post(SIGN, data=_order_sign(bundle), content_type="application/json")
        assert r.status_code == 200 and r.get_json() == {"cards": []}


def test_last_resort_error_handler_answers_operation_outcome_500(make_app, caplog):
    app = make_app(cors_origins=("https://sandbox.cds-hooks.org",))

    @app.get("/boom")
    def boom():                      # a view with a bug: only such truly internal errors are 500
        raise RuntimeError("secret detail MRN0042")

    r = app.test_client().get("/boom", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert r.status_code == 500 and r.mimetype == "application/json"
    assert _diagnostics(r) == "internal error; the service has logged it"
    assert r.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"   # a listed origin
    assert "MRN0042" not in r.get_data(as_text=True)


def test_unexpected_failure_in_the_hook_view_is_200_with_a_notice_card(tmp_path, engine, study_folder, caplog):
    import sqlite3

    from cds_hooks.app import create_app
    from cds_hooks.runtime import Runtime, identity_dict
    from cds_hooks.settings import load_settings
    from cds_hooks.store import Store
    from imaging import FolderSource
    from tests.cds_hooks.conftest import CountingGenerate

    class FailingAuditStore(Store):
        """A store whose audit write fails (a full disk), with an identifier in the message."""

        problem = "database or disk is full near 'MRN0042'"

        def audit(self, **kwargs):
            raise sqlite3.OperationalError(self.problem)

    settings = load_settings(environ={}, auth="none", db=tmp_path / "x.sqlite3", public_url="https://cds.example.org")
    runtime = Runtime(source=FolderSource(study_folder), generate=CountingGenerate(engine),
                      model_identity=identity_dict(engine.identity), store=FailingAuditStore(settings.db))
    app = create_app(settings, runtime=runtime)
    caplog.set_level("INFO", logger="cds_hooks")
    try:
        body = hook_request("order-sign", "pat-1", [], prefetch={"patient": patient("pat-1", "MRN0042")})
        r = app.test_client().post(SIGN, json=body)
    finally:
        app.extensions["cxr_cds"].close()
    assert r.status_code == 200
    (card,) = check_response(r.get_json())
    assert card["summary"] == "No AI draft: the service failed (OperationalError)" and card["indicator"] == "info"
    assert f"hookInstance={body['hookInstance']} hook answer failed: OperationalError" in caplog.text
    assert "MRN0042" not in caplog.text and "MRN0042" not in r.get_data(as_text=True)


def test_pipeline_failure_is_logged_with_the_hook_instance_and_no_identifiers(make_app, engine, caplog):
    from tests.cds_hooks.conftest import PATIENT_NAME, CountingGenerate

    generate = CountingGenerate(engine)
    generate.fail = MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    client = make_app(generate=generate, deadline_s=30).test_client()
    body = hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        prefetch={"patient": patient("pat-42", "MRN0042")})
    caplog.set_level("INFO")
    r = client.post(SIGN, json=body)                                                               # 44
    assert generate.calls == 1                                                   # the model really ran
    assert r.status_code == 200 and r.mimetype == "application/json"
    (card,) = check_response(r.get_json())
    assert card["summary"] == "No AI draft: the analysis failed (MemoryError)" and card["indicator"] == "info"
    assert "logged the failure" in card["detail"] and "suggestions" not in card
    hooked = [rec for rec in caplog.records if f"hookInstance={body['hookInstance']}" in rec.getMessage()]
    assert [(rec.levelname, rec.getMessage()) for rec in hooked] == [
        ("WARNING", f"hookInstance={body['hookInstance']} no AI draft: MemoryError")]
    for identifier in ("pat-42", "MRN0042", PATIENT_NAME, "Testpatient", "1961-04-02", "19610402", "ACC0042"):
        assert identifier not in caplog.text, identifier


def test_a_foreign_error_message_quoting_an_identifier_never_reaches_the_log(make_app, engine, caplog):
    # a library's message may quote request or header values: only typed errors of ours are logged in full
    from tests.cds_hooks.conftest import CountingGenerate

    generate = CountingGenerate(engine)
    generate.fail = ValueError("cannot parse PatientID MRN0042 for Testpatient")
    client = make_app(generate=generate, deadline_s=30).test_client()
    body = hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        prefetch={"patient": patient("pat-42", "MRN0042")})
    caplog.set_level("INFO")
    r = client.post(SIGN, json=body)
    assert r.status_code == 200 and generate.calls == 1
    assert "ValueError" in caplog.text and "(message not logged)" in caplog.text
    for identifier in ("MRN0042", "Testpatient"):
        assert identifier not in caplog.text, identifier
