"""Patient safety: the ordered study's DICOM PatientID must be one of the Patient's MRNs before a draft
is offered for that Patient; card wording for priors, lookups past the deadline and reused drafts."""
from __future__ import annotations

import threading
import time
from datetime import date

from cds_hooks.hooks import patient_match
from imaging import FolderSource, StudyMatch
from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import ORDERED_UID, PRIOR_UID, cxr_order, hook_request, patient
from tests.cds_hooks.review_links import review_page

SIGN = "/cds-services/cxr-ai-order-sign"
MISMATCH = ("The study found for accession ACC0042 belongs to a different patient in the PACS; "
            "no AI draft offered: check the order's accession number.")


def _drain(app, timeout_s=60):
    analyzer = app.extensions["cxr_cds"].analyzer
    end = time.monotonic() + timeout_s
    while analyzer.in_flight and time.monotonic() < end:
        time.sleep(0.05)
    assert analyzer.in_flight == 0


def _sign(pid: str, mrn: str | None, accession: str | None) -> dict:
    pt = patient(pid, mrn or "unused")
    if mrn is None:
        del pt["identifier"]
    return hook_request("order-sign", pid, [cxr_order("sr-1", pid, accession=accession)], prefetch={"patient": pt})


def test_study_match_carries_the_patient_id_but_never_shows_it(make_app):
    analyzer = make_app().extensions["cxr_cds"].analyzer
    plan = analyzer.plan(accession_number="ACC0042")
    assert plan.study.patient_id == "MRN0042"                                 # from QIDO-RS (0010,0020)
    assert "MRN0042" not in repr(plan) and "MRN0042" not in repr(plan.study)


def test_patient_match_rules():
    study = StudyMatch(ORDERED_UID, date(2026, 11, 28), "ACC0042", ("DX",), None, patient_id="MRN0042")
    assert patient_match(study, ("OTHER", "MRN0042")) == "verified"
    assert patient_match(study, ("MRN0077",)) == "mismatch"
    assert patient_match(study, ()) == "unverified"                          # the Patient has no MRN
    no_id = StudyMatch(ORDERED_UID, None, "ACC0042", ("DX",), None)
    assert patient_match(no_id, ("MRN0042",)) == "unverified"                 # the PACS sent no PatientID


def test_accession_of_another_patients_study_gets_a_warning_and_no_draft(make_app, caplog):
    caplog.set_level("DEBUG")
    app = make_app(deadline_s=30)
    # an order for pat-77 that carries pat-42's accession number
    r = app.test_client().post(SIGN, json=_sign("pat-77", "MRN0077", "ACC0042"))
    assert r.status_code == 200
    (card,) = check_response(r.get_json())
    assert card["indicator"] == "warning"
    assert card["summary"] == "No AI draft: the study for accession ACC0042 belongs to a different patient"
    assert card["detail"].startswith(MISMATCH)
    assert "suggestions" not in card and "links" not in card and PRIOR_UID not in card["detail"]
    assert app.generate.calls == 0                                            # pat-42's image is never read
    assert "belongs to another patient" in caplog.text
    assert "MRN0042" not in caplog.text and "MRN0077" not in caplog.text


def test_a_stored_study_arrival_draft_is_not_given_to_another_patient(make_app):
    app = make_app(deadline_s=30)
    client = app.test_client()
    assert client.post(f"/studies/{ORDERED_UID}/analyze").status_code == 202   # no patient on this path
    _drain(app)
    (card,) = check_response(client.post(SIGN, json=_sign("pat-77", "MRN0077", "ACC0042")).get_json())
    assert card["detail"].startswith(MISMATCH) and "suggestions" not in card
    (mine,) = check_response(client.post(SIGN, json=_sign("pat-42", "MRN0042", "ACC0042")).get_json())
    assert mine["suggestions"][0]["actions"][0]["resource"]["subject"] == {"reference": "Patient/pat-42"}


def test_patient_without_mrn_gets_a_draft_to_read_but_nothing_to_create(make_app):
    app = make_app(deadline_s=30)
    r = app.test_client().post(SIGN, json=_sign("pat-42", None, "ACC0042"))
    (card,) = check_response(r.get_json())
    assert card["summary"].startswith("AI draft (patient match unverified), chest X-ray 2026-11-28")
    assert "**The patient match could not be verified**" in card["detail"]
    assert "suggestions" not in card and "selectionBehavior" not in card
    assert ORDERED_UID in review_page(app.test_client(), card) and app.generate.calls == 1


def test_prior_card_wording_says_why_the_ordered_study_was_not_read(make_app):
    app = make_app(deadline_s=30)
    client = app.test_client()
    (no_accession,) = check_response(client.post(SIGN, json=_sign("pat-77", "MRN0077", None)).get_json())
    assert no_accession["summary"].startswith("Prior chest X-ray 2025-01-10")
    assert ("**This is a PRIOR study from 2025-01-10.** The order carries no accession number, so the study "
            "just ordered could not be looked up in the PACS.") in no_accession["detail"]
    assert "acquired" not in no_accession["detail"]
    (not_yet,) = check_response(client.post(SIGN, json=_sign("pat-77", "MRN0077", "ACC-NOT-YET")).get_json())
    assert ("**This is a PRIOR study from 2025-01-10, not the study just ordered**, which is not in the PACS yet"
            in not_yet["detail"])


class SlowSource(FolderSource):
    """A folder whose QIDO-RS answers wait for ``gate``: a PACS that is slow to search."""

    def __init__(self, path):
        super().__init__(path)
        self.gate = threading.Event()

    def search_for_studies(self, search_filters):
        self.gate.wait(30)
        return super().search_for_studies(search_filters)


def test_deadline_during_the_lookup_gives_a_neutral_card(make_app, study_folder):
    source = SlowSource(study_folder)
    app = make_app(source=source, deadline_s=0.3)
    try:
        r = app.test_client().post(SIGN, json=_sign("pat-42", "MRN0042", "ACC0042"))
    finally:
        source.gate.set()
    (card,) = check_response(r.get_json())
    assert card["summary"] == "AI draft not available yet; try again shortly"
    assert card["indicator"] == "info" and "suggestions" not in card
    assert "in preparation" not in card["detail"] and "StudyInstanceUID" not in card["detail"]
    assert "did not finish looking up the ordered chest radiograph" in card["detail"]
    time.sleep(0.2)                  # let the background lookup start its analysis, then let it finish
    _drain(app)


def test_card_says_when_the_draft_was_made_without_the_orders_context(make_app):
    app = make_app(deadline_s=30)
    client = app.test_client()
    (fresh,) = check_response(client.post(SIGN, json=_sign("pat-42", "MRN0042", "ACC0042")).get_json())
    assert "Drafted without" not in fresh["detail"]                           # made with this order's context
    other = make_app(deadline_s=30)
    c2 = other.test_client()
    assert c2.post(f"/studies/{ORDERED_UID}/analyze").status_code == 202      # context-free, stored first
    _drain(other)
    (reused,) = check_response(c2.post(SIGN, json=_sign("pat-42", "MRN0042", "ACC0042")).get_json())
    assert "**Drafted without the order's clinical context**" in reused["detail"]
    assert reused["suggestions"] and other.generate.calls == 1
