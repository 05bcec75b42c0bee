"""Issue 11: corrupt JPEG 2000 and RLE instances in a real Orthanc, through a served instance (gunicorn).

Both used to end the process (GDCM's SIGABRT; the Rust RLE decoder's panic, a BaseException). Now the
service answers an explanatory card, stays up, records the failure against the instance version, and a
later call answers from that record instead of decoding again (until the instance changes).
"""
from __future__ import annotations

from datetime import date

import pytest
import requests

from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import cxr_order, hook_request, patient
from tests.cds_hooks.serving import served

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]
CASES = {"j2k": ("1.2.826.0.1.3680043.8.498.8810001", "ACCBADJ2K", "make_corrupt_j2k"),
         "rle": ("1.2.826.0.1.3680043.8.498.8810002", "ACCBADRLE", "make_corrupt_rle")}


@pytest.fixture(scope="module")
def bad_studies(orthanc):
    from tests.support import synthetic_cxr as s

    for kind, (uid, accession, make) in CASES.items():
        ds = getattr(s, make)(view="PA", study_uid=uid, accession=accession, patient_id=f"MRN{accession}")
        ds.StudyDate = date(2026, 11, 25).strftime("%Y%m%d")
        orthanc.store(ds)
    return CASES


@pytest.fixture(scope="module")
def service(orthanc, bad_studies, tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("undecodable")
    env = {"CXR_CDS_AUTH": "none", "CXR_CDS_DICOMWEB_URL": orthanc.dicomweb_url, "CXR_CDS_MODEL": str(tiny_model_dir),
           "CXR_CDS_DEVICE": "cpu", "CXR_CDS_DB": str(work / "cds.sqlite3"), "CXR_CDS_DEADLINE_S": "60",
           "CXR_CDS_MAX_NEW_TOKENS": "8", "CXR_CDS_JOB_RETRY_FAILED_AFTER_S": "0"}
    with served(env, work) as url:
        yield url, work


def _sign(accession: str) -> dict:
    return hook_request("order-sign", "pat-bad", [cxr_order("sr-bad", "pat-bad", accession=accession)],
                        prefetch={"patient": patient("pat-bad", f"MRN{accession}")})


@pytest.mark.parametrize("kind", ["j2k", "rle"])
def test_a_corrupt_instance_gives_a_card_the_process_survives_and_is_not_decoded_again(service, kind):
    url, work = service
    uid, accession, _ = CASES[kind]
    r = requests.post(f"{url}/cds-services/cxr-ai-order-sign", json=_sign(accession), timeout=120)
    assert r.status_code == 200
    (card,) = check_response(r.json())
    assert card["summary"].startswith("No AI draft: imaging problem"), card["summary"]
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200        # the service is still up
    # the next call: answered from the record (the job is tried again at once here, RETRY_FAILED_AFTER_S=0)
    r = requests.post(f"{url}/cds-services/cxr-ai-order-sign", json=_sign(accession), timeout=120)
    (card,) = check_response(r.json())
    assert card["summary"].startswith("No AI draft: imaging problem")
    assert "not decoded again" in card["detail"]
    log = (work / "serve.log").read_text(errors="replace")
    assert "Traceback" not in log and "Worker exiting" not in log and "WORKER TIMEOUT" not in log
