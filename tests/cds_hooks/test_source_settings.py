"""PACS settings (credentials, timeout, retries, pixel limit, reduced J2K decode) and build_source.

Real collaborators only: an Orthanc with HTTP basic authentication on loopback, and the loopback
recorder from tests/cds_hooks/loopback.py standing in for a bearer-token PACS (Orthanc cannot check
bearer tokens without an authorization plugin).
"""
from __future__ import annotations

import logging

import pytest

import imaging
from cds_hooks.errors import SettingsError
from cds_hooks.runtime import build_source
from cds_hooks.settings import load_settings
from imaging import DicomWebSource, FolderSource, ImagingUnavailable, locate_studies
from tests.cds_hooks.loopback import LoopbackServer
from tests.support.synthetic_cxr import make_cxr

BASE = {"CXR_CDS_AUTH": "none"}
TOKEN = "tok-3f9a-SECRET"
PASSWORD = "pw-7c1e-SECRET"


def _settings(**env: str):
    return load_settings(environ={**BASE, **{f"CXR_CDS_{k.upper()}": v for k, v in env.items()}})


@pytest.fixture(scope="module")
def pacs_with_users(tmp_path_factory):
    """An Orthanc that answers 401 without the right username/password, holding one study."""
    from tests.support.orthanc import OrthancServer, find_orthanc

    if find_orthanc() is None:
        pytest.skip("Orthanc (Debian packages orthanc, orthanc-dicomweb) is not installed")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-users"), users={"cds": PASSWORD})
    server.start()
    try:
        ds = make_cxr(rows=64, cols=64)
        server.store(ds)
        yield server, ds
    finally:
        server.stop()


@pytest.fixture
def recorder():
    server = LoopbackServer(routes={"/dicom-web/studies": (200, [])})
    try:
        yield server
    finally:
        server.close()


# -- parsing --------------------------------------------------------------------------------------------
def test_defaults_keep_todays_behaviour_except_the_reduced_decode():
    s = _settings()
    assert (s.dicomweb_bearer_token, s.dicomweb_timeout_s, s.dicomweb_retries) == (None, 10.0, 2)
    assert s.max_pixels == imaging.MAX_PIXELS
    assert s.decode_min_short_edge == 1024


def test_every_new_variable_parses():
    s = _settings(dicomweb_url="http://pacs.example.org/dicom-web", dicomweb_bearer_token=f" {TOKEN} ",
                  dicomweb_timeout_s="2.5", dicomweb_retries="0", max_pixels="1000000",
                  decode_min_short_edge="0")
    assert s.dicomweb_bearer_token == TOKEN
    assert (s.dicomweb_timeout_s, s.dicomweb_retries, s.max_pixels, s.decode_min_short_edge) == (2.5, 0, 1_000_000, 0)


@pytest.mark.parametrize("var, value, message", [
    ("CXR_CDS_DICOMWEB_TIMEOUT_S", "soon", r"CXR_CDS_DICOMWEB_TIMEOUT_S='soon' is not valid: .*expected seconds "
                                           r"per PACS request, e\.g\. 10"),
    ("CXR_CDS_DICOMWEB_TIMEOUT_S", "0", r"CXR_CDS_DICOMWEB_TIMEOUT_S='0' is not valid: must be > 0"),
    ("CXR_CDS_DICOMWEB_RETRIES", "-1", r"CXR_CDS_DICOMWEB_RETRIES='-1' is not valid: must be >= 0; expected extra "
                                       r"attempts"),
    ("CXR_CDS_DICOMWEB_RETRIES", "two", r"CXR_CDS_DICOMWEB_RETRIES='two' is not valid"),
    ("CXR_CDS_MAX_PIXELS", "0", r"CXR_CDS_MAX_PIXELS='0' is not valid: must be > 0; expected the largest Rows x "
                                r"Columns decoded"),
    ("CXR_CDS_MAX_PIXELS", "40MP", r"CXR_CDS_MAX_PIXELS='40MP' is not valid"),
    ("CXR_CDS_DECODE_MIN_SHORT_EDGE", "-512", r"CXR_CDS_DECODE_MIN_SHORT_EDGE='-512' is not valid: must be >= 0; "
                                              r"expected pixels, e\.g\. 1024 .* 0 = full resolution"),
    ("CXR_CDS_DECODE_MIN_SHORT_EDGE", "1k", r"CXR_CDS_DECODE_MIN_SHORT_EDGE='1k' is not valid"),
    ("CXR_CDS_MAX_BYTES", "0", r"CXR_CDS_MAX_BYTES='0' is not valid: must be > 0; expected the largest DICOM "
                               r"instance retrieved or inflated"),
    ("CXR_CDS_MAX_BYTES", "512MB", r"CXR_CDS_MAX_BYTES='512MB' is not valid"),
])
def test_a_bad_value_names_the_variable(var, value, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ={**BASE, var: value})


def test_secrets_stay_out_of_the_settings_repr():
    s = _settings(dicomweb_username="cds", dicomweb_password=PASSWORD)
    t = _settings(dicomweb_bearer_token=TOKEN)
    assert PASSWORD not in repr(s) and TOKEN not in repr(t) and "dicomweb_username='cds'" in repr(s)


@pytest.mark.parametrize("env, message", [
    ({"dicomweb_bearer_token": TOKEN, "dicomweb_username": "cds", "dicomweb_password": PASSWORD},
     r"set either CXR_CDS_DICOMWEB_USERNAME/CXR_CDS_DICOMWEB_PASSWORD or CXR_CDS_DICOMWEB_BEARER_TOKEN "
     r"for the PACS, not both"),
    ({"dicomweb_username": "cds"},
     r"PACS basic authentication needs both CXR_CDS_DICOMWEB_USERNAME and CXR_CDS_DICOMWEB_PASSWORD"),
    ({"dicomweb_password": PASSWORD},
     r"PACS basic authentication needs both CXR_CDS_DICOMWEB_USERNAME and CXR_CDS_DICOMWEB_PASSWORD"),
])
def test_contradictory_credentials_are_named_not_shown(env, message):
    s = _settings(dicomweb_url="http://127.0.0.1:1/dicom-web", **env)
    with pytest.raises(SettingsError, match=message) as exc:
        build_source(s)
    assert PASSWORD not in str(exc.value) and TOKEN not in str(exc.value)


def test_no_url_gives_the_folder_source(tmp_path):
    assert isinstance(build_source(_settings(dicom_folder=str(tmp_path))), FolderSource)


# -- build_source hands the settings to the PACS client --------------------------------------------------
@pytest.mark.orthanc
def test_basic_credentials_reach_a_real_orthanc_with_users(pacs_with_users, caplog):
    server, ds = pacs_with_users
    caplog.set_level(logging.DEBUG)
    source = build_source(_settings(dicomweb_url=server.dicomweb_url, dicomweb_username="cds",
                                    dicomweb_password=PASSWORD))
    assert isinstance(source, DicomWebSource)
    [match] = locate_studies(source, study_instance_uid=ds.StudyInstanceUID)
    assert match.study_instance_uid == ds.StudyInstanceUID
    assert PASSWORD not in caplog.text

    wrong = build_source(_settings(dicomweb_url=server.dicomweb_url, dicomweb_username="cds",
                                   dicomweb_password="not-it"))
    with pytest.raises(ImagingUnavailable, match=r"answered 401 .*check the DICOMweb credentials") as exc:
        locate_studies(wrong, study_instance_uid=ds.StudyInstanceUID)
    assert exc.value.code == "pacs_unauthorized"


def test_the_bearer_token_is_sent_and_never_logged(recorder, caplog):
    caplog.set_level(logging.DEBUG)
    source = build_source(_settings(dicomweb_url=f"{recorder.url}/dicom-web", dicomweb_bearer_token=TOKEN))
    assert locate_studies(source, study_instance_uid="1.2.3") == []
    assert [r.authorization for r in recorder.requests] == [f"Bearer {TOKEN}"]
    assert TOKEN not in caplog.text and TOKEN not in source.name


def test_without_credentials_no_authorization_header_is_sent(recorder):
    source = build_source(_settings(dicomweb_url=f"{recorder.url}/dicom-web"))
    locate_studies(source, study_instance_uid="1.2.3")
    assert [r.authorization for r in recorder.requests] == [None]


@pytest.mark.parametrize("retries", ["0", "1", "3"])
def test_retries_setting_is_the_number_of_extra_attempts_on_5xx(retries):
    server = LoopbackServer(routes={"/dicom-web/studies": (503, {})})
    try:
        source = build_source(_settings(dicomweb_url=f"{server.url}/dicom-web", dicomweb_retries=retries))
        with pytest.raises(ImagingUnavailable, match=r"answered 503 .* \(after retries\); see the PACS log"):
            locate_studies(source, study_instance_uid="1.2.3")
        assert len(server.requests) == 1 + int(retries)
    finally:
        server.close()


def test_timeout_setting_bounds_each_request():
    server = LoopbackServer(routes={"/dicom-web/studies": (200, [], 1.5)})     # answers after 1.5 s
    try:
        source = build_source(_settings(dicomweb_url=f"{server.url}/dicom-web", dicomweb_timeout_s="0.2",
                                        dicomweb_retries="0"))
        with pytest.raises(ImagingUnavailable, match=r"did not answer in time .*raise the DICOMweb timeout") as exc:
            locate_studies(source, study_instance_uid="1.2.3")
        assert exc.value.code == "pacs_timeout"
    finally:
        server.close()


def test_the_byte_limit_reaches_the_source(tmp_path):
    from imaging import StudyNotFound, find_radiograph
    from tests.support import synthetic_cxr as syn

    ds = syn.make_cxr(view="PA")
    syn.write(ds, tmp_path / "pa.dcm")
    assert _settings().max_bytes == imaging.MAX_BYTES
    roomy = build_source(_settings(dicom_folder=str(tmp_path)))
    assert find_radiograph(roomy, study_instance_uid=ds.StudyInstanceUID).sop_instance_uid == ds.SOPInstanceUID
    tight = build_source(_settings(dicom_folder=str(tmp_path), max_bytes="1000"))
    with pytest.raises((StudyNotFound, imaging.UnsupportedImage)):
        find_radiograph(tight, study_instance_uid=ds.StudyInstanceUID)
