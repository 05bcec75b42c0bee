"""Two clocks: study arrival (POST /studies/.../analyze, QIDO-RS polling) and hooks (stored or started
work, single-flight, deadline), plus the draft link target. Checklist items 61-62 (behaviour, not timing)."""
from __future__ import annotations

import threading
import time
from datetime import date

from cds_hooks.jobs import Poller
from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import LATERAL_UID, ORDERED_UID, PRIOR_UID, CountingGenerate, cxr_order, hook_request, patient
from tests.cds_hooks.review_links import draft_json, link_target, review_page

SIGN = "/cds-services/cxr-ai-order-sign"
SELECT = "/cds-services/cxr-ai-order-select"


def _sign_42():
    return hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        prefetch={"patient": patient("pat-42", "MRN0042")}, )


def _drain(app, timeout_s=60):
    analyzer = app.extensions["cxr_cds"].analyzer
    end = time.monotonic() + timeout_s
    while analyzer.in_flight and time.monotonic() < end:
        time.sleep(0.05)
    assert analyzer.in_flight == 0


def test_hook_computes_then_reads_the_stored_draft(make_app):
    app = make_app(deadline_s=30)
    client = app.test_client()
    first = client.post(SIGN, json=_sign_42())
    (card,) = check_response(first.get_json())
    action = card["suggestions"][0]["actions"][0]
    report = action["resource"]
    assert action["type"] == "create" and report["resourceType"] == "DiagnosticReport"
    assert report["status"] == "preliminary" and report["subject"] == {"reference": "Patient/pat-42"}
    assert ORDERED_UID not in card["detail"] and "ACC0042" not in card["detail"]   # on the review page instead
    page = review_page(client, card)
    assert ORDERED_UID in page and "ACC0042" in page
    assert "AI-generated draft" in card["detail"] and "report_context" in card["detail"]
    assert "Drafted with" not in card["detail"]                     # made with this order's own context
    second = client.post(SIGN, json=_sign_42())
    (again,) = check_response(second.get_json())
    assert app.generate.calls == 1
    assert link_target(again) == link_target(card) and again["uuid"] != card["uuid"]
    assert again["links"] != card["links"]                          # one signed link per card
    # the link's token unlocks the stored draft JSON
    body = draft_json(client, card)
    assert body["study"]["sop_instance_uid"] and body["fhir"]["resourceType"] == "Bundle"
    assert body["model"]["prompt_id"] and "subject" not in body["diagnostic_report"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'cxr_cds_stored_result_lookups_total{result="hit"} 1.0' in metrics
    assert "cxr_cds_stored_result_hit_ratio 0.5" in metrics
    assert 'cxr_cds_hook_latency_seconds_count{hook="order-sign"} 2.0' in metrics


def test_unknown_draft_is_404(make_app):
    client = make_app(pacs_token="p" * 32).test_client()
    assert client.get("/drafts/not-a-draft").status_code == 401                  # no credential
    r = client.get("/drafts/not-a-draft", headers={"Authorization": "Bearer " + "p" * 32})
    assert r.status_code == 404
    assert "no stored AI draft 'not-a-draft'" in r.get_json()["issue"][0]["diagnostics"]


def test_burst_of_twenty_runs_the_model_once_and_answers_at_the_deadline(make_app, engine):
    generate = CountingGenerate(engine)
    generate.gate = threading.Event()                       # the model is "slow" until released
    # 2 s: the lookup (QIDO-RS on the folder) must finish inside it even on a loaded machine, or the
    # card is the neutral "not available yet" one instead of "in preparation"
    app = make_app(generate=generate, deadline_s=2.0)
    body = hook_request("order-select", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        selections=["ServiceRequest/sr-1"], prefetch={"patient": patient("pat-42", "MRN0042")})
    responses = []

    def fire():
        responses.append(app.test_client().post(SELECT, json=body))

    threads = [threading.Thread(target=fire) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(responses) == 20 and all(r.status_code == 200 for r in responses)
    for r in responses:                                                           # 61: pending card
        (card,) = check_response(r.get_json())
        assert card["summary"].startswith("AI draft in preparation for the chest X-ray")
        assert card["indicator"] == "info" and "suggestions" not in card
    generate.gate.set()
    _drain(app)
    assert generate.calls == 1                                                    # 62
    r = app.test_client().post(SELECT, json=body)
    (card,) = check_response(r.get_json())
    assert card["suggestions"][0]["actions"][0]["type"] == "create"
    assert generate.calls == 1


def test_pending_card_can_be_turned_off(make_app, engine):
    generate = CountingGenerate(engine)
    generate.gate = threading.Event()
    app = make_app(generate=generate, deadline_s=0.2, pending_card=False)
    r = app.test_client().post(SIGN, json=_sign_42())
    assert r.status_code == 200 and r.get_json() == {"cards": []}
    generate.gate.set()
    _drain(app)


def test_study_arrival_then_hook_uses_the_stored_analysis(make_app):
    app = make_app(deadline_s=30)
    client = app.test_client()
    r = client.post(f"/studies/{ORDERED_UID}/analyze")
    assert r.status_code == 202 and r.get_json() == {"status": "queued", "study_instance_uid": ORDERED_UID}
    _drain(app)
    r = client.post(f"/studies/{ORDERED_UID}/analyze")
    assert r.status_code == 200 and r.get_json()["status"] == "stored"
    assert r.get_json()["draft"].startswith("https://cds.example.org/drafts/")
    # the hook has clinical context; it reuses the context-free study-arrival analysis
    (card,) = check_response(client.post(SIGN, json=_sign_42()).get_json())
    assert "suggestions" in card and app.generate.calls == 1
    assert "**Drafted without the order's clinical context**" in card["detail"]


def test_study_arrival_errors(client):
    r = client.post("/studies/1.2.3.4.5.6.7/analyze")
    assert r.status_code == 404
    assert "study_not_found" in r.get_json()["issue"][0]["diagnostics"]
    r = client.post(f"/studies/{LATERAL_UID}/analyze")
    assert r.status_code == 422
    assert "no_frontal_radiograph" in r.get_json()["issue"][0]["diagnostics"]


def test_qido_polling_analyses_new_chest_studies_once(make_app):
    app = make_app()
    poller = Poller(app.extensions["cxr_cds"].analyzer, interval_s=60)
    poller.since = date(2000, 1, 1)
    started = poller.poll_once()
    assert set(started) == {ORDERED_UID, PRIOR_UID}          # the lateral-only study is skipped
    assert poller.poll_once() == []                           # seen studies are not started again
    _drain(app)
    assert app.generate.calls == 2
    assert app.extensions["cxr_cds"].runtime.store.count_analyses() == 2


def test_polling_thread_starts_only_when_configured(make_app):
    assert make_app().extensions["cxr_cds"].analyzer._poller is None
    app = make_app(poll_interval_s=3600)
    poller = app.extensions["cxr_cds"].analyzer._poller
    assert poller is not None and poller.is_alive()
    app.extensions["cxr_cds"].close()
    poller.join(5)
    assert not poller.is_alive()


def test_found_plans_are_reused_for_plan_ttl(make_app):
    import pytest

    from imaging import StudyNotFound

    analyzer = make_app().extensions["cxr_cds"].analyzer
    assert analyzer.plan(accession_number="ACC0042") is analyzer.plan(accession_number="ACC0042")
    with pytest.raises(StudyNotFound):
        analyzer.plan(accession_number="ACC-NOT-YET")
    assert (("accession_number", "ACC-NOT-YET"),) not in analyzer._plans     # "not found" is not remembered
    fresh = make_app(plan_ttl_s=0).extensions["cxr_cds"].analyzer
    assert fresh.plan(accession_number="ACC0042") is not fresh.plan(accession_number="ACC0042")


def test_patient_view_shows_the_latest_radiograph(make_app):
    app = make_app(deadline_s=30)
    body = hook_request("patient-view", "pat-77", [], prefetch={"patient": patient("pat-77", "MRN0077")})
    r = app.test_client().post("/cds-services/cxr-ai-patient-view", json=body)
    (card,) = check_response(r.get_json())
    assert card["summary"].startswith("Latest chest X-ray 2025-01-10 (AI findings)")
    assert "suggestions" not in card and PRIOR_UID in review_page(app.test_client(), card)
