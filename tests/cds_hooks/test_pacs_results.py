"""Issue 15 through the service: with CXR_CDS_PACS_WRITE=sr each stored analysis goes to the PACS (a real
Orthanc) as one DICOM SR in the study read, by a job of its own that never holds up the hook."""
from __future__ import annotations

import time
from datetime import date

import pytest

from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import cxr_order, hook_request, patient

pytestmark = pytest.mark.orthanc
SR_UID = "1.2.826.0.1.3680043.8.498.7710001"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture(scope="module")
def sr_study(orthanc):
    from tests.support import synthetic_cxr as s

    datasets = s.make_study(("PA",), study_uid=SR_UID, accession="ACCSR001", patient_id="MRNSR001",
                            study_date=date(2026, 11, 21), rows=160, cols=128, seed=11)
    orthanc.store(*datasets)
    return datasets


def _sign(accession="ACCSR001") -> dict:
    return hook_request("order-sign", "pat-sr", [cxr_order("sr-sr", "pat-sr", accession=accession)],
                        prefetch={"patient": patient("pat-sr", "MRNSR001")})


def _status(client, timeout_s=60.0) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        status = client.get(f"/studies/{SR_UID}").get_json()
        if (status.get("pacs_results") or {}).get("status") in ("done", "failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"no SR result: {status}")


def _srs(orthanc):
    from imaging import DicomWebSource

    client = DicomWebSource.from_url(orthanc.dicomweb_url).client
    return client.search_for_instances(study_instance_uid=SR_UID, search_filters={"SOPClassUID": COMPREHENSIVE_SR})


def test_a_stored_analysis_is_written_once_as_an_sr_in_its_study(make_app, orthanc, sr_study):
    from imaging import DicomWebSource

    app = make_app(source=DicomWebSource.from_url(orthanc.dicomweb_url), deadline_s=60, pacs_write="sr")
    client = app.test_client()
    (card,) = check_response(client.post("/cds-services/cxr-ai-order-sign", json=_sign()).get_json())
    assert card["summary"].startswith("AI draft")              # the hook did not wait for the SR
    status = _status(client)
    assert status["pacs_results"]["status"] == "done", status
    sr = status["pacs_results"]["sr"]
    assert sr["study_instance_uid"] == SR_UID and sr["sop_class_uid"] == COMPREHENSIVE_SR
    found = _srs(orthanc)
    assert len(found) == 1 and found[0]["00080018"]["Value"][0] == sr["sop_instance_uid"]
    # another call (the stored analysis) and a new service process on the same store: still one SR
    check_response(client.post("/cds-services/cxr-ai-order-sign", json=_sign()).get_json())
    again = make_app(source=DicomWebSource.from_url(orthanc.dicomweb_url), deadline_s=60, pacs_write="sr",
                     db=app.extensions["cxr_cds"].settings.db)
    check_response(again.test_client().post("/cds-services/cxr-ai-order-sign", json=_sign()).get_json())
    time.sleep(1.0)
    assert len(_srs(orthanc)) == 1


@pytest.mark.parametrize("write_status, attempts", [(400, 1), (503, 5)])
def test_a_refused_or_failing_sr_write_leaves_the_hook_unaffected(make_app, orthanc, sr_study, tmp_path,
                                                                  write_status, attempts):
    from imaging import DicomWebSource
    from tests.support.pacs_proxy import WriteRefusingPacs

    pacs = WriteRefusingPacs(orthanc.dicomweb_url, write_status=write_status)
    try:
        app = make_app(source=DicomWebSource.from_url(pacs.url, retries=0), deadline_s=60, pacs_write="sr",
                       job_max_attempts=2, job_retry_delay_s=0.1, db=tmp_path / "refused.sqlite3")
        client = app.test_client()
        (card,) = check_response(client.post("/cds-services/cxr-ai-order-sign", json=_sign()).get_json())
        assert card["summary"].startswith("AI draft")          # the draft is served whatever the SR does
        status = _status(client)
        results = status["pacs_results"]
        # a refusal (4xx) is not retried; a 5xx is retried by the job layer up to the attempts allowed
        # (at least 5 for an SR), then the job fails with the reason
        assert results["status"] == "failed" and "pacs:" in results["reason"], results
        assert results["attempts"] == attempts and pacs.writes == attempts
        assert len(_srs(orthanc)) == 1                            # nothing written through the refusing PACS
    finally:
        pacs.close()
