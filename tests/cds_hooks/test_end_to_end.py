"""Issue 2 item 7, end to end over HTTP: order-sign -> QIDO-RS/WADO-RS on a real Orthanc -> tiny model ->
card with a `create` DiagnosticReport draft (R4-valid). Once through the Flask test client, once through
a real gunicorn (`cxr-cds serve`) on loopback. Plus checklist item 27 (no token or identifiers in logs
or in the SQLite file)."""
from __future__ import annotations

import json
from datetime import date

import pytest
import requests

from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import PATIENT_NAME, cxr_order, hook_request, patient
from tests.cds_hooks.loopback import LoopbackServer
from tests.cds_hooks.review_links import draft_json
from tests.cds_hooks.serving import served

pytestmark = pytest.mark.orthanc
AI_LABEL = "AIAST"          # HL7 v3 ObservationValue "artificial intelligence asserted"
E2E_UID = "1.2.826.0.1.3680043.8.498.5500001"


@pytest.fixture(scope="module")
def e2e_study(orthanc):
    from tests.support import synthetic_cxr as s

    datasets = s.make_study(("LL", "PA"), study_uid=E2E_UID, accession="ACCE2E01", patient_id="MRNE2E01",
                            study_date=date(2026, 11, 28), rows=192, cols=160, seed=3)
    for ds in datasets:
        ds.PatientName = PATIENT_NAME
        ds.PatientBirthDate = "19610402"
    orthanc.store(*datasets)
    return datasets


def _order_sign(accession="ACCE2E01", mrn="MRNE2E01", **top):
    return hook_request("order-sign", "pat-e2e", [cxr_order("sr-e2e", "pat-e2e", accession=accession)],
                        prefetch={"patient": patient("pat-e2e", mrn)}, **top)


def _check_draft_card(card, assert_valid_r4):
    action = card["suggestions"][0]["actions"][0]
    report = action["resource"]
    assert action["type"] == "create"
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["subject"] == {"reference": "Patient/pat-e2e"}
    assert report["code"]["coding"]
    assert any(E2E_UID in json.dumps(ref) for ref in report["imagingStudy"])
    assert any(tag.get("code") == AI_LABEL for tag in report["meta"]["security"])
    assert_valid_r4(report)


def test_order_sign_end_to_end_through_orthanc(make_app, orthanc, e2e_study, assert_valid_r4):
    from imaging import DicomWebSource

    app = make_app(source=DicomWebSource.from_url(orthanc.dicomweb_url), deadline_s=60)
    client = app.test_client()
    assert any(s["id"] == "cxr-ai-order-sign" for s in client.get("/cds-services").get_json()["services"])
    r = client.post("/cds-services/cxr-ai-order-sign", json=_order_sign())
    assert r.status_code == 200
    (card,) = check_response(r.get_json())
    _check_draft_card(card, assert_valid_r4)
    assert "PA view" in card["detail"]                       # the frontal instance, not the lateral
    draft = draft_json(client, card)
    assert draft["study"]["study_instance_uid"] == E2E_UID and draft["fhir"]["type"] == "collection"
    # a study that does not exist, for a patient without radiographs: 200, no card
    r = client.post("/cds-services/cxr-ai-order-sign", json=_order_sign(accession="ACC-MISSING", mrn="MRN-NONE"))
    assert r.status_code == 200 and r.get_json() == {"cards": []}


def test_no_token_or_identifier_reaches_logs_or_storage(make_app, orthanc, e2e_study, caplog, tmp_path):
    from imaging import DicomWebSource

    token = "secret-fhir-access-token-4711"
    fhir = LoopbackServer()
    fhir.routes["/fhir/Condition"] = (200, {"resourceType": "Bundle", "type": "searchset"})
    db = tmp_path / "privacy.sqlite3"
    caplog.set_level("INFO")
    try:
        app = make_app(source=DicomWebSource.from_url(orthanc.dicomweb_url), deadline_s=60, db=db,
                       fhir_allowlist=(fhir.url,))
        client = app.test_client()
        auth = {"fhirServer": f"{fhir.url}/fhir", "fhirAuthorization": {
            "access_token": token, "token_type": "Bearer", "expires_in": 30, "scope": "patient/*.read",
            "subject": "cxr-ai-cds"}}
        (card,) = check_response(client.post("/cds-services/cxr-ai-order-sign", json=_order_sign(**auth)).get_json())
        assert fhir.requests and fhir.requests[0].authorization == f"Bearer {token}"
        # a 412 (patient unobtainable) is logged too (a pipeline failure: test_requests.py)
        body = _order_sign(**auth)
        del body["prefetch"]
        assert client.post("/cds-services/cxr-ai-order-sign", json=body).status_code == 412
        client.post("/cds-services/cxr-ai-order-sign/feedback", json={"feedback": [{
            "card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z",
            "overrideReason": {"userComment": "MRNE2E01 Testpatient seen already"}}]})
    finally:
        fhir.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("privacy.sqlite3*"))
    assert b"ACCE2E01" in stored or E2E_UID.encode() in stored          # the file really holds the draft
    for secret in (token, "MRNE2E01", "Testpatient", "1961-04-02", "19610402", "pat-e2e"):
        assert secret not in caplog.text, secret
        assert secret.encode() not in stored, secret


@pytest.fixture(scope="module")
def gunicorn_url(orthanc, e2e_study, tiny_model_dir, tmp_path_factory):
    """`cxr-cds serve` (gunicorn, one worker, threads) on loopback, stopped by PID."""
    work = tmp_path_factory.mktemp("gunicorn")
    env = {"CXR_CDS_AUTH": "none", "CXR_CDS_DICOMWEB_URL": orthanc.dicomweb_url, "CXR_CDS_MODEL": str(tiny_model_dir),
           "CXR_CDS_DEVICE": "cpu", "CXR_CDS_DB": str(work / "cds.sqlite3"), "CXR_CDS_DEADLINE_S": "60",
           "CXR_CDS_MAX_NEW_TOKENS": "12", "CXR_CDS_MAX_REQUEST_BYTES": "65536",
           "CXR_CDS_CORS_ORIGINS": "https://sandbox.cds-hooks.org"}
    with served(env, work) as url:
        yield url


def test_gunicorn_serves_the_checklist_basics(gunicorn_url, assert_valid_r4):
    url = gunicorn_url
    r = requests.get(f"{url}/cds-services", timeout=5)
    assert r.headers["Content-Type"].startswith("application/json") and len(r.json()["services"]) == 3
    r = requests.post(f"{url}/cds-services/cxr-ai-order-sign", json=_order_sign(), timeout=90)
    assert r.status_code == 200
    (card,) = check_response(r.json())
    _check_draft_card(card, assert_valid_r4)
    r = requests.post(f"{url}/cds-services/cxr-ai-order-sign", data="{oops", timeout=5,
                      headers={"Content-Type": "application/json", "Origin": "https://sandbox.cds-hooks.org"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"    # listed, never *
    r = requests.post(f"{url}/cds-services/nope", json=_order_sign(), timeout=5)
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    r = requests.post(f"{url}/cds-services/cxr-ai-order-sign", timeout=5,
                      json=_order_sign() | {"pad": "x" * 70000})
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
    r = requests.options(f"{url}/cds-services/cxr-ai-order-sign", timeout=5,
                         headers={"Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "cxr_cds_hook_latency_seconds" in requests.get(f"{url}/metrics", timeout=5).text


def test_serve_refuses_a_bad_setting(monkeypatch):
    from click.testing import CliRunner

    from cds_hooks.commands.serve import serve

    monkeypatch.setenv("CXR_CDS_AUTH", "none")
    monkeypatch.setenv("CXR_CDS_DEADLINE_S", "later")
    result = CliRunner().invoke(serve, ["--port", "1"])
    assert result.exit_code == 2
    assert "CXR_CDS_DEADLINE_S='later' is not valid" in result.output
