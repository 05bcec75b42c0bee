"""No PatientID in any log line while a PACS is down or failing: URLs are logged with their query values
redacted, whoever logs them (urllib3's retry warnings, dicomweb-client's debug lines, ours)."""
from __future__ import annotations

import logging

import pytest

from imaging import DicomWebSource, ImagingUnavailable, find_radiograph, locate_studies
from imaging.dicomweb import redact_urls
from tests.imaging.conftest import FakePacs
from tests.support.orthanc import OrthancServer

MRN = "MRN-7734-SECRET"


def _all_log_text(caplog) -> str:
    """Every captured record as a handler would write it (message and traceback) and its raw parts."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    parts = [caplog.text]
    for record in caplog.records:
        parts += [formatter.format(record), record.getMessage(), str(record.exc_text or "")]
    return "\n".join(parts)


@pytest.mark.orthanc
def test_stopped_orthanc_retry_warnings_carry_no_patient_id(tmp_path, caplog):
    orthanc = OrthancServer(tmp_path / "orthanc").start()
    url = orthanc.dicomweb_url
    orthanc.stop()                                    # a real PACS that went away: connection refused
    source = DicomWebSource.from_url(url, timeout_s=5, retries=2, backoff_s=0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ImagingUnavailable) as info:
        locate_studies(source, patient_id=MRN)
    assert info.value.code == "pacs_unreachable"
    text = _all_log_text(caplog)
    assert "Retrying" in text and "PatientID=<redacted>" in text     # the URL was logged, its value was not
    assert MRN not in text


def test_failing_pacs_5xx_logs_carry_no_patient_id(caplog):
    with FakePacs(status=503, body=b"down") as pacs:
        source = DicomWebSource.from_url(pacs.url, timeout_s=5, retries=2, backoff_s=0)
        caplog.set_level(logging.DEBUG)
        with pytest.raises(ImagingUnavailable) as info:
            find_radiograph(source, patient_id=MRN)
    assert info.value.code == "pacs_error"
    assert len(pacs.requests) == 3 and MRN in pacs.requests[0]["path"]   # the query did carry it
    text = _all_log_text(caplog)
    assert "PatientID=<redacted>" in text
    assert MRN not in text


def test_redact_urls():
    assert redact_urls("GET /dicom-web/studies?PatientID=123&includefield=00080050 done") == \
        "GET /dicom-web/studies?PatientID=<redacted>&includefield=<redacted> done"
    assert redact_urls("url: '/studies?AccessionNumber=A%2011'") == "url: '/studies?AccessionNumber=<redacted>'"
    assert redact_urls("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer <redacted>"
    assert redact_urls("Retry(total=1, connect=1)") == "Retry(total=1, connect=1)"
