"""Checklist items 45-48 (feedback) and the feedback/queue metrics."""
from __future__ import annotations

import pytest

from cds_hooks.errors import BadRequest
from cds_hooks.feedback import parse_feedback
from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import cxr_order, hook_request, patient

FEEDBACK = "/cds-services/cxr-ai-order-sign/feedback"


@pytest.fixture
def drafted(make_app):
    """An app that has sent one draft card for pat-42's ordered study."""
    app = make_app(deadline_s=30)
    body = hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        prefetch={"patient": patient("pat-42", "MRN0042")})
    (card,) = check_response(app.test_client().post("/cds-services/cxr-ai-order-sign", json=body).get_json())
    return app, card


def test_accepted_and_overridden_feedback_is_stored_once(drafted):
    app, card = drafted
    client = app.test_client()
    accepted = {"feedback": [{"card": card["uuid"], "outcome": "accepted",
                              "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                              "outcomeTimestamp": "2026-11-28T10:05:31Z"}]}
    r = client.post(FEEDBACK, json=accepted)                                                     # 45
    assert r.status_code == 200 and r.get_json() == {"received": 1, "stored": 1}
    r = client.post(FEEDBACK, json=accepted)                                                     # 48
    assert r.status_code == 200 and r.get_json() == {"received": 1, "stored": 0}
    overridden = {"feedback": [
        {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:06:00Z",
         "overrideReason": {"reason": {"code": "disagree", "system": "urn:cxr-cds:cds-hooks:override-reason"}}},
        {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:07:00Z",
         "overrideReason": {"userComment": "Seen by radiology already."}}]}
    r = client.post(FEEDBACK, json=overridden)                                                   # 46
    assert r.status_code == 200 and r.get_json() == {"received": 2, "stored": 2}
    store = app.extensions["cxr_cds"].runtime.store
    assert store.count_feedback() == 3
    metrics = client.get("/metrics").get_data(as_text=True)
    present = store.card(card["uuid"])["findings"] or ["none"]
    for finding in present:
        assert f'cxr_cds_feedback_total{{finding="{finding}",outcome="accepted"}} 1.0' in metrics
        assert f'cxr_cds_feedback_total{{finding="{finding}",outcome="overridden"}} 2.0' in metrics


def test_feedback_for_an_unknown_card_is_200_and_logged(client, caplog):
    caplog.set_level("INFO", logger="cds_hooks")
    r = client.post(FEEDBACK, json={"feedback": [{"card": "not-ours", "outcome": "overridden",
                                                  "outcomeTimestamp": "2026-11-28T10:00:00Z"}]})
    assert r.status_code == 200                                                                  # 48
    assert "feedback for unknown card not-ours" in caplog.text


@pytest.mark.parametrize("body, message", [
    ({}, r'feedback body must be \{"feedback"'),
    ({"feedback": []}, r'feedback body must be \{"feedback"'),
    ({"feedback": ["x"]}, r"feedback\[0\] is not an object"),
    ({"feedback": [{"outcome": "accepted", "outcomeTimestamp": "2026-11-28T10:00:00Z"}]}, r"missing card"),
    ({"feedback": [{"card": "c", "outcomeTimestamp": "2026-11-28T10:00:00Z"}]}, r"missing outcome"),
    ({"feedback": [{"card": "c", "outcome": "overridden"}]}, r"missing outcomeTimestamp"),
    ({"feedback": [{"card": 5, "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z"}]},
     r"card must be the card's uuid"),
    ({"feedback": [{"card": "c", "outcome": "ignored", "outcomeTimestamp": "2026-11-28T10:00:00Z"}]},
     r"outcome 'ignored' is not one of accepted, overridden"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
     r"'yesterday' is not an ISO 8601 instant"),
    ({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-28T10:00:00Z"}]},
     r"outcome 'accepted' needs acceptedSuggestions"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z",
                    "overrideReason": "no"}]}, r"overrideReason must be an object"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z",
                    "overrideReason": {"reason": {"display": "x"}}}]}, r"must be a Coding with code and system"),
    # crafted types that used to reach the store and give a 500
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z",
                    "overrideReason": {"reason": {"code": {"x": 1}, "system": "urn:s"}}}]},
     r"overrideReason.reason must be a Coding with code and system \(strings\)"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z",
                    "overrideReason": {"reason": {"code": "disagree", "system": ["urn:s"]}}}]},
     r"overrideReason.reason must be a Coding"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z",
                    "overrideReason": {"userComment": {"text": "x"}}}]}, r"overrideReason.userComment must be a string"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z",
                    "acceptedSuggestions": ["x"]}]},
     r'feedback\[0\].acceptedSuggestions must be an array of \{"id": <suggestion uuid>\} objects'),
    ({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-28T10:00:00Z",
                    "acceptedSuggestions": [{"id": 3}]}]}, r"acceptedSuggestions must be an array of"),
    ({"feedback": [{"card": "c", "outcome": ["accepted"], "outcomeTimestamp": "2026-11-28T10:00:00Z"}]},
     r"outcome a non-string value is not one of accepted, overridden"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": 1764324000}]},
     r"outcomeTimestamp \(not a string\) is not an ISO 8601 instant"),
])
def test_malformed_feedback_is_400(client, body, message):
    with pytest.raises(BadRequest, match=message):
        parse_feedback(body)
    r = client.post(FEEDBACK, json=body)                                                         # 47
    assert r.status_code == 400 and r.get_json()["resourceType"] == "OperationOutcome"
    assert r.get_json()["issue"][0]["code"] == "invalid"


def test_metrics_expose_queue_and_model_latency(drafted):
    app, _ = drafted
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert "cxr_cds_model_queue_depth" in text and "cxr_cds_analyses_in_flight 0.0" in text
    assert "cxr_cds_model_latency_seconds_count 1.0" in text
    assert 'cxr_cds_analyses_total{outcome="stored"} 1.0' in text
    assert 'cxr_cds_stored_result_lookups_total{result="miss"} 1.0' in text
