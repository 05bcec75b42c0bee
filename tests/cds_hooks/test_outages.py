"""Issue 11, storage and PACS outages, through HTTP: the service degrades loudly, never silently.

- the replay store cannot be written (a locked or read-only database): 503 with Retry-After, not 401;
  writable again: served again, without a restart;
- the database file deleted under a running service: it stops taking work with a clear 503 and
  /readyz says why;
- the PACS unreachable: a draft already stored for the ordered accession number is still served, and
  the card says the PACS could not be reached;
- concurrent calls for one study share one PACS look-up.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import cxr_order, hook_request, mint, patient

ISS = "https://ehr.example.org"
BASE = "https://cds.example.org"
SIGN = f"{BASE}/cds-services/cxr-ai-order-sign"


def _sign():
    return hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        prefetch={"patient": patient("pat-42", "MRN0042")})


@pytest.fixture
def own_app(make_app, tmp_path):
    """An app on a store that gives up on a lock after 0.3 s (production waits 10 s)."""
    def make(source=None, **overrides):
        values = {"db": tmp_path / "outage.sqlite3", "max_new_tokens": 8, "public_url": BASE, "deadline_s": 30}
        return make_app(source=source, store_timeout_s=0.3, **{**values, **overrides})
    return make


def test_a_replay_store_that_cannot_be_written_answers_503_then_recovers(own_app, keys, tmp_path):
    app = own_app(auth="jwt", trusted_issuers={ISS: {"jwks": {"keys": [keys["es"][1]]}}})
    client = app.test_client()
    lock = sqlite3.connect(tmp_path / "outage.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")                  # the database cannot be written now
    try:
        r = client.post("/cds-services/cxr-ai-order-sign", json=_sign(),
                        headers={"Authorization": f"Bearer {mint(keys['es'][0], aud=SIGN)}"})
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert "failed" in r.get_json()["issue"][0]["diagnostics"]
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    r = client.post("/cds-services/cxr-ai-order-sign", json=_sign(),
                    headers={"Authorization": f"Bearer {mint(keys['es'][0], aud=SIGN)}"})
    assert r.status_code == 200                    # writable again: no restart needed


def test_a_deleted_database_stops_the_service_taking_work(own_app, tmp_path):
    app = own_app()
    client = app.test_client()
    assert client.get("/readyz").get_json()["checks"]["database"] == "answers"
    for p in tmp_path.glob("outage.sqlite3*"):
        p.unlink()
    r = client.post("/cds-services/cxr-ai-order-sign", json=_sign())
    assert r.status_code in (200, 503)
    if r.status_code == 200:                       # the hook never 500s: a notice card, never a draft
        (card,) = check_response(r.get_json())
        assert card["summary"].startswith("No AI draft")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "has disappeared" in ready.get_json()["checks"]["database"]
    assert not list(tmp_path.glob("outage.sqlite3"))  # nothing silently re-created and written to


def test_a_stored_draft_is_served_while_the_pacs_is_unreachable(own_app, study_folder, tmp_path):
    from imaging import DicomWebSource

    first = own_app()
    (card,) = check_response(first.test_client().post("/cds-services/cxr-ai-order-sign", json=_sign()).get_json())
    assert card["summary"].startswith("AI draft")
    first.extensions["cxr_cds"].close()
    # the same store, the PACS now down (nothing listens on that port)
    down = own_app(source=DicomWebSource.from_url("http://127.0.0.1:9/dicom-web", timeout_s=1, retries=0),
                   dicomweb_url="http://127.0.0.1:9/dicom-web")
    (again,) = check_response(down.test_client().post("/cds-services/cxr-ai-order-sign", json=_sign()).get_json())
    assert again["summary"].startswith("AI draft") and "PACS could not be reached" in again["detail"]
    assert "suggestions" not in again               # the patient match could not be checked again: no create


def test_concurrent_calls_for_one_study_share_one_pacs_lookup(own_app, study_folder):
    from imaging import FolderSource

    class CountingSource(FolderSource):              # the real folder source, counting its study searches
        searches = 0
        lock = threading.Lock()

        def search_for_studies(self, search_filters):
            with self.lock:
                type(self).searches += 1
            time.sleep(0.5)                           # a slow PACS
            return super().search_for_studies(search_filters)

    app = own_app(source=CountingSource(study_folder), plan_ttl_s=0)
    client = app.test_client()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/cds-services/cxr-ai-order-sign", json=_sign()), range(8)))
    assert all(a.status_code == 200 for a in answers)
    assert CountingSource.searches < 8              # shared while in flight (not one per call)
