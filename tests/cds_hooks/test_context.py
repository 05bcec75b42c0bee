"""Checklist items 12 and 20-26: prefetch first, allowlisted fhirServer fallback, 412 when the Patient is missing."""
from __future__ import annotations

import pytest

from cds_hooks.context import fhir_server_allowed, gather, render_template
from cds_hooks.errors import PreconditionFailed
from cds_hooks.services import SERVICES_BY_ID, parse_request
from tests.cds_hooks.conftest import cxr_order, hook_request, patient

SIGN = SERVICES_BY_ID["cxr-ai-order-sign"]
TOKEN = "opaque-short-lived-token"
OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}


def _auth(server_url, **kw):
    return {"fhirServer": server_url + "/fhir",
            "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 30,
                                  "scope": "patient/Patient.read", "subject": "cxr-ai-cds"}, **kw}


def _routes(server, pid="pat-5", mrn="MRN-NONE"):
    server.routes.update({
        f"/fhir/Patient/{pid}": (200, patient(pid, mrn)),
        "/fhir/Condition": (200, {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Condition", "code": {"text": "COPD"},
                          "clinicalStatus": {"coding": [{"code": "active"}]}}}]}),
        "/fhir/Encounter/enc-1": (200, {"resourceType": "Encounter", "status": "in-progress",
                                        "class": {"code": "EMER", "display": "emergency"}}),
    })


def _order_sign(pid="pat-5", **kw):
    # a chest X-ray order whose study is not acquired, for a patient without radiographs: no model run
    return hook_request("order-sign", pid, [cxr_order("sr-1", pid, accession="ACC-NOT-YET")], **kw)


def test_allowlist_matching():
    allow = ("https://ehr.example.org/fhir", "ehr2.example.org", "http://127.0.0.1:8999/fhir")
    assert fhir_server_allowed("https://ehr.example.org/fhir/r4", allow)
    assert not fhir_server_allowed("https://ehr.example.org/fhirx", allow)
    assert not fhir_server_allowed("http://ehr.example.org/fhir", allow)          # scheme matters
    assert fhir_server_allowed("https://ehr2.example.org/any/base", allow)
    assert not fhir_server_allowed("http://ehr2.example.org/any", allow)          # bare host: https only
    assert fhir_server_allowed("http://127.0.0.1:8999/fhir", allow)
    assert not fhir_server_allowed("http://127.0.0.1:9000/fhir", allow)


def test_template_tokens():
    assert render_template("Patient/{{context.patientId}}", {"patientId": "p1"}) == "Patient/p1"
    assert render_template("Encounter/{{context.encounterId}}", {"patientId": "p1"}) is None


def test_complete_prefetch_makes_no_outbound_call(make_app, fhir_server):
    client = make_app(fhir_allowlist=(fhir_server.url,)).test_client()
    prefetch = {"patient": patient("pat-5", "MRN-NONE"), "conditions": {"resourceType": "Bundle", "type": "searchset"},
                "encounter": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}}}
    r = client.post("/cds-services/cxr-ai-order-sign",
                    json=_order_sign(prefetch=prefetch, **_auth(fhir_server.url)) | {"context": {
                        **_order_sign()["context"], "encounterId": "enc-1"}})
    assert r.status_code == 200 and r.get_json() == {"cards": []}
    assert fhir_server.requests == []                                               # 20


def test_absent_keys_are_fetched_with_the_bearer_token(make_app, fhir_server):
    _routes(fhir_server)
    client = make_app(fhir_allowlist=(fhir_server.url,)).test_client()
    body = _order_sign(**_auth(fhir_server.url))
    body["context"]["encounterId"] = "enc-1"
    r = client.post("/cds-services/cxr-ai-order-sign", json=body)
    assert r.status_code == 200
    assert sorted(fhir_server.paths()) == ["/fhir/Condition", "/fhir/Encounter/enc-1", "/fhir/Patient/pat-5"]
    assert all(rec.authorization == f"Bearer {TOKEN}" for rec in fhir_server.requests)   # 21
    condition = next(rec for rec in fhir_server.requests if rec.path == "/fhir/Condition")
    assert "patient=pat-5" in condition.query and "clinical-status=active" in condition.query


def test_null_empty_and_outcome_keys_are_not_requeried(make_app, fhir_server):
    _routes(fhir_server)
    client = make_app(fhir_allowlist=(fhir_server.url,)).test_client()
    for conditions in (None, {"resourceType": "Bundle", "type": "searchset", "total": 0}, OUTCOME):  # 22, 23
        body = _order_sign(prefetch={"patient": patient("pat-5", "MRN-NONE"), "conditions": conditions},
                           **_auth(fhir_server.url))
        r = client.post("/cds-services/cxr-ai-order-sign", json=body)
        assert r.status_code == 200 and r.get_json() == {"cards": []}
    assert fhir_server.paths() == []


def test_patient_as_operation_outcome_is_not_data(make_app):
    client = make_app().test_client()
    r = client.post("/cds-services/cxr-ai-order-sign", json=_order_sign(prefetch={"patient": OUTCOME}))
    assert r.status_code == 412                                                      # 23, 24
    assert "OperationOutcome" in r.get_json()["issue"][0]["diagnostics"]
    r = client.post("/cds-services/cxr-ai-order-sign", json=_order_sign(prefetch={"patient": None}))
    assert r.status_code == 412
    assert "prefetch holds no Patient" in r.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("route, why", [
    ((401, OUTCOME), "returned HTTP 401"),
    ((500, {"resourceType": "Bundle"}), "returned HTTP 500"),
    ((200, {"resourceType": "Patient", "id": "pat-5"}, 1.5), "failed: ReadTimeout"),
])
def test_unobtainable_patient_is_412(make_app, fhir_server, route, why):
    fhir_server.routes["/fhir/Patient/pat-5"] = route
    client = make_app(fhir_allowlist=(fhir_server.url,), fhir_timeout_s=0.5).test_client()
    r = client.post("/cds-services/cxr-ai-order-sign", json=_order_sign(**_auth(fhir_server.url)))
    assert r.status_code == 412                                                      # 24
    body = r.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "incomplete"
    assert why in body["issue"][0]["diagnostics"] and TOKEN not in r.get_data(as_text=True)


def test_not_allowlisted_fhir_server_is_never_contacted(make_app, fhir_server):
    _routes(fhir_server)
    client = make_app(fhir_allowlist=("https://ehr.example.org",)).test_client()
    r = client.post("/cds-services/cxr-ai-order-sign", json=_order_sign(**_auth(fhir_server.url)))
    assert r.status_code == 412                                                      # 12
    assert "is not on CXR_CDS_FHIR_ALLOWLIST" in r.get_json()["issue"][0]["diagnostics"]
    assert fhir_server.requests == []


def test_missing_optional_data_is_200(make_app, fhir_server):
    fhir_server.routes["/fhir/Condition"] = (503, OUTCOME)
    client = make_app(fhir_allowlist=(fhir_server.url,)).test_client()
    body = _order_sign(prefetch={"patient": patient("pat-5", "MRN-NONE")}, **_auth(fhir_server.url))
    r = client.post("/cds-services/cxr-ai-order-sign", json=body)
    assert r.status_code == 200 and r.get_json() == {"cards": []}                    # 25
    assert fhir_server.paths() == ["/fhir/Condition"]


def test_paginated_bundles_are_followed_with_the_token(fhir_server):
    page2 = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Condition", "code": {"text": "Heart failure"}}}]}
    fhir_server.routes["/fhir/Condition-page2"] = (200, page2)
    first = {"resourceType": "Bundle", "type": "searchset",
             "link": [{"relation": "next", "url": f"{fhir_server.url}/fhir/Condition-page2"}],
             "entry": [{"resource": {"resourceType": "Condition", "code": {"text": "COPD"}}},
                       {"resource": OUTCOME, "search": {"mode": "outcome"}}]}
    body = _order_sign(prefetch={"patient": patient("pat-5", "M"), "conditions": first}, **_auth(fhir_server.url))
    req = parse_request(SIGN, body)
    data = gather(req, SIGN, allowlist=(fhir_server.url,), timeout_s=2)               # 26
    assert [c["code"]["text"] for c in data.conditions] == ["COPD", "Heart failure"]
    assert fhir_server.requests[0].authorization == f"Bearer {TOKEN}"
    assert data.fetched == ("conditions",) and data.partial == ()                      # complete now
    # without FHIR access the first page is used as it is, nothing is fetched, and it is not complete
    fhir_server.requests.clear()
    data = gather(req, SIGN, allowlist=(), timeout_s=2)
    assert [c["code"]["text"] for c in data.conditions] == ["COPD"] and fhir_server.requests == []
    assert data.partial == ("conditions",) and data.fetched == ()


def _first_page(next_url: str) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "total": 3,
            "link": [{"relation": "self", "url": next_url.replace("page=2", "page=1")},
                     {"relation": "next", "url": next_url}],
            "entry": [{"resource": {"resourceType": "Condition", "code": {"text": "COPD"}}}]}


@pytest.mark.parametrize("access, allowlisted, next_host, page2, why", [
    ("none", False, None, None, "no fhirServer was given"),
    ("server", False, None, None, "fhirServer is not on CXR_CDS_FHIR_ALLOWLIST"),
    ("server", True, None, (401, OUTCOME), "its next page could not be read (FHIR Condition query returned HTTP 401)"),
    ("server", True, "https://elsewhere.example", None,
     "its next page could not be read (next link points to another host; not followed)"),
])
def test_paginated_prefetch_without_fhir_access_is_used_as_an_incomplete_set(make_app, fhir_server, caplog, access,
                                                                           allowlisted, next_host, page2, why):
    # item 26: the Condition searchset's first page is used (Conditions are nice to have: 200, not 412),
    # never taken for the whole set (HookData.partial), and the log says why (no token, no patient id)
    next_url = f"{next_host or fhir_server.url}/fhir/Condition?patient=pat-5&page=2"
    if page2:
        fhir_server.routes["/fhir/Condition?patient=pat-5&page=2"] = page2
    prefetch = {"patient": patient("pat-5", "MRN-NONE"), "conditions": _first_page(next_url)}
    body = _order_sign(prefetch=prefetch, **(_auth(fhir_server.url) if access == "server" else {}))
    allowlist = (fhir_server.url,) if allowlisted else ()
    caplog.set_level("INFO", logger="cds_hooks")
    data = gather(parse_request(SIGN, body), SIGN, allowlist=allowlist, timeout_s=2)
    assert [c["code"]["text"] for c in data.conditions] == ["COPD"]
    assert data.partial == ("conditions",) and data.fetched == ()
    assert f"hookInstance={body['hookInstance']} prefetch conditions is paginated and " in caplog.text
    assert why in caplog.text and "an incomplete set" in caplog.text
    assert [r.authorization for r in fhir_server.requests] == ([f"Bearer {TOKEN}"] if page2 else [])
    # the hook itself answers 200 (the order's study is not acquired: no card), never 412
    r = make_app(fhir_allowlist=allowlist).test_client().post("/cds-services/cxr-ai-order-sign", json=body)
    assert r.status_code == 200 and r.get_json() == {"cards": []}
    for secret in (TOKEN, "pat-5", "MRN-NONE", "Testpatient"):
        assert secret not in caplog.text, secret


def test_next_link_to_another_host_is_not_followed(fhir_server):
    first = {"resourceType": "Bundle", "type": "searchset",
             "link": [{"relation": "next", "url": "https://elsewhere.example/fhir/Condition?page=2"}],
             "entry": [{"resource": {"resourceType": "Condition", "code": {"text": "COPD"}}}]}
    fhir_server.routes["/fhir/Condition"] = (200, first)
    fhir_server.routes["/fhir/Patient/pat-5"] = (200, patient("pat-5", "M"))
    req = parse_request(SIGN, _order_sign(**_auth(fhir_server.url)))
    data = gather(req, SIGN, allowlist=(fhir_server.url,), timeout_s=2)
    assert data.conditions == () and "conditions" not in data.fetched
    assert data.patient["id"] == "pat-5"


def test_no_fhir_server_and_no_patient_is_412():
    req = parse_request(SIGN, _order_sign())
    with pytest.raises(PreconditionFailed, match=r"absent from prefetch and no fhirServer was given"):
        gather(req, SIGN, allowlist=(), timeout_s=1)
