"""Checklist items 1-8 (discovery) and 42 (methods), through the Flask test client."""
from __future__ import annotations

from tests.cds_hooks.checks import check_prefetch_template, no_empty
from tests.cds_hooks.conftest import hook_request


def test_discovery_lists_three_services(client):
    r = client.get("/cds-services")
    assert r.status_code == 200 and r.mimetype == "application/json"                # 1
    services = r.get_json()["services"]
    assert {s["hook"] for s in services} == {"order-select", "order-sign", "patient-view"}
    assert len({s["id"] for s in services}) == 3                                     # 4, 8
    for s in services:
        for key in ("hook", "id", "description", "title", "usageRequirements"):     # 2, 3
            assert isinstance(s[key], str) and s[key]
        no_empty(s)                                                                  # 5
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert "Condition" in s["prefetch"]["conditions"]
        assert s["prefetch"]["encounter"] == "Encounter/{{context.encounterId}}"
        for template in s["prefetch"].values():                                      # 6, 7
            check_prefetch_template(template)


def test_each_advertised_service_answers_its_hook(client):
    for s in client.get("/cds-services").get_json()["services"]:                      # 4
        body = hook_request(s["hook"], "pat-none", [], selections=[] if s["hook"] == "order-select" else None,
                            prefetch={"patient": {"resourceType": "Patient", "id": "pat-none"}})
        r = client.post(f"/cds-services/{s['id']}", json=body)
        assert r.status_code == 200, (s["id"], r.get_json())
        assert r.get_json() == {"cards": []}


def test_wrong_methods_give_405_operation_outcome(client):
    r = client.post("/cds-services", json={})                                         # 42
    assert r.status_code == 405 and r.get_json()["resourceType"] == "OperationOutcome"
    r = client.get("/cds-services/cxr-ai-order-sign")
    assert r.status_code == 405 and "POST" in r.headers["Allow"]
    issue = r.get_json()["issue"][0]                                                  # 43
    assert issue["severity"] == "error" and issue["code"] == "not-supported" and "405" in issue["diagnostics"]


def test_unknown_service_gives_404_operation_outcome(client):
    r = client.post("/cds-services/no-such-service", json=hook_request("order-sign", "p", []))
    assert r.status_code == 404
    assert "no CDS service 'no-such-service'" in r.get_json()["issue"][0]["diagnostics"]
    r = client.post("/cds-services/no-such-service/feedback", json={"feedback": []})
    assert r.status_code == 404
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.get_json()["resourceType"] == "OperationOutcome"
