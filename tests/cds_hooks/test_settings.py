"""Settings: one typed object from CXR_CDS_* variables and an optional file; bad values name the variable."""
from __future__ import annotations

import json

import pytest

from cds_hooks.errors import SettingsError
from cds_hooks.settings import DEFAULT_CXR_CODES, Settings, load_settings

ISSUERS = json.dumps({"https://ehr.example.org": {"jku": ["https://ehr.example.org/jwks.json"]}})


def test_defaults_are_production_safe():
    with pytest.raises(SettingsError, match="CXR_CDS_AUTH=jwt needs CXR_CDS_TRUSTED_ISSUERS"):
        load_settings(environ={})
    s = load_settings(environ={"CXR_CDS_TRUSTED_ISSUERS": ISSUERS, "CXR_CDS_PUBLIC_URL": "https://cds.example.org"})
    assert s.auth == "jwt" and s.deadline_s == 5.0 and s.pending_card is True
    assert s.cxr_codes == DEFAULT_CXR_CODES and s.poll_interval_s == 0
    assert s.pacs_token is None


def test_jwt_auth_needs_a_public_url():
    # without it the expected `aud` would come from the request's Host header, which the caller chooses
    with pytest.raises(SettingsError, match=r"CXR_CDS_AUTH=jwt needs CXR_CDS_PUBLIC_URL \(the https base URL"):
        load_settings(environ={"CXR_CDS_TRUSTED_ISSUERS": ISSUERS})
    assert load_settings(environ={"CXR_CDS_AUTH": "none"}).public_url is None     # development: Host is fine


def test_pacs_token_is_a_long_secret_kept_out_of_messages_and_repr():
    secret = "s3cr3t-" + "x" * 30
    s = load_settings(environ={"CXR_CDS_AUTH": "none", "CXR_CDS_PACS_TOKEN": secret})
    assert s.pacs_token == secret and secret not in repr(s)
    short = "short-secret-9f8e7d"
    with pytest.raises(SettingsError, match=r"CXR_CDS_PACS_TOKEN='<secret>' is not valid: must be at least 32 "
                                            r"printable ASCII characters") as caught:
        load_settings(environ={"CXR_CDS_AUTH": "none", "CXR_CDS_PACS_TOKEN": short})
    assert short not in str(caught.value)


def test_every_variable_parses(tmp_path):
    env = {
        "CXR_CDS_DICOMWEB_URL": "http://127.0.0.1:8042/dicom-web/",
        "CXR_CDS_DICOM_FOLDER": str(tmp_path),
        "CXR_CDS_MODEL": "ECOFRI/CXR-LLAVA-v2", "CXR_CDS_MODEL_REVISION": "abc123",
        "CXR_CDS_QUANTIZATION": "4bit", "CXR_CDS_AUTH": "none", "CXR_CDS_DB": str(tmp_path / "x.db"),
        "CXR_CDS_FHIR_ALLOWLIST": "https://ehr.example.org/fhir, ehr2.example.org",
        "CXR_CDS_DEADLINE_S": "2.5", "CXR_CDS_MAX_NEW_TOKENS": "64",
        "CXR_CDS_PUBLIC_URL": "https://cds.example.org/", "CXR_CDS_PENDING_CARD": "none",
        "CXR_CDS_CXR_CODES": "http://loinc.org|36643-5,71250",
    }
    s = load_settings(environ=env)
    assert s.dicomweb_url == "http://127.0.0.1:8042/dicom-web"
    assert s.dicom_folder == tmp_path and s.db == tmp_path / "x.db"
    assert (s.model, s.model_revision, s.quantization, s.auth) == ("ECOFRI/CXR-LLAVA-v2", "abc123", "4bit", "none")
    assert s.fhir_allowlist == ("https://ehr.example.org/fhir", "ehr2.example.org")
    assert (s.deadline_s, s.max_new_tokens, s.pending_card) == (2.5, 64, False)
    assert s.public_url == "https://cds.example.org"
    assert s.cxr_codes == ("http://loinc.org|36643-5", "71250")


@pytest.mark.parametrize("var, value, message", [
    ("CXR_CDS_DEADLINE_S", "soon", r"CXR_CDS_DEADLINE_S='soon' is not valid: .*expected seconds"),
    ("CXR_CDS_DEADLINE_S", "0", r"CXR_CDS_DEADLINE_S='0' is not valid: must be > 0"),
    ("CXR_CDS_MAX_NEW_TOKENS", "-3", r"CXR_CDS_MAX_NEW_TOKENS='-3' is not valid"),
    ("CXR_CDS_AUTH", "basic", r"CXR_CDS_AUTH='basic' is not valid: must be one of jwt, none"),
    ("CXR_CDS_QUANTIZATION", "3bit", r"CXR_CDS_QUANTIZATION='3bit' is not valid: must be one of none, 8bit, 4bit"),
    ("CXR_CDS_PUBLIC_URL", "cds.example.org", r"CXR_CDS_PUBLIC_URL=.* must be an absolute http\(s\) URL"),
    ("CXR_CDS_DICOMWEB_URL", "ftp://pacs", r"CXR_CDS_DICOMWEB_URL=.* must be an absolute http\(s\) URL"),
    ("CXR_CDS_PENDING_CARD", "maybe", r"CXR_CDS_PENDING_CARD='maybe' is not valid"),
    ("CXR_CDS_TRUSTED_ISSUERS", "[1]", r"CXR_CDS_TRUSTED_ISSUERS='\[1\]' is not valid: must be a JSON object"),
    ("CXR_CDS_TRUSTED_ISSUERS", '{"https://x": {}}', r"issuer 'https://x' needs one of 'jku'"),
    ("CXR_CDS_JWT_ALGORITHMS", "HS256", r"CXR_CDS_JWT_ALGORITHMS='HS256' is not valid: .*'none' and HS\* are refused"),
    ("CXR_CDS_CRITICAL_FINDINGS", "pneumothorax,dragons", r"CXR_CDS_CRITICAL_FINDINGS: unknown finding 'dragons'"),
    ("CXR_CDS_TEMPLATE", "report.v9", r"CXR_CDS_TEMPLATE='report.v9' is not a prompt template; known: "),
    ("CXR_CDS_DEADLINE", "5", r"CXR_CDS_DEADLINE is not a setting; known: CXR_CDS_DICOMWEB_URL"),
])
def test_bad_value_names_the_variable(var, value, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ={"CXR_CDS_AUTH": "none", var: value})


def test_missing_dicom_folder_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="CXR_CDS_DICOM_FOLDER=.* is not a directory"):
        load_settings(environ={"CXR_CDS_AUTH": "none", "CXR_CDS_DICOM_FOLDER": str(tmp_path / "nope")})


def test_settings_file_json_and_toml_env_wins(tmp_path):
    f = tmp_path / "cds.json"
    f.write_text(json.dumps({"deadline_s": 1.5, "CXR_CDS_AUTH": "none", "fhir_allowlist": ["a.example.org"]}))
    s = load_settings(environ={"CXR_CDS_SETTINGS_FILE": str(f), "CXR_CDS_DEADLINE_S": "3"})
    assert s.deadline_s == 3.0 and s.auth == "none" and s.fhir_allowlist == ("a.example.org",)
    t = tmp_path / "cds.toml"
    t.write_text('auth = "none"\npending_card = false\n[trusted_issuers."https://i"]\njku = ["https://i/j"]\n')
    s = load_settings(environ={"CXR_CDS_SETTINGS_FILE": str(t)})
    assert s.pending_card is False and s.trusted_issuers == {"https://i": {"jku": ["https://i/j"]}}


def test_settings_file_errors(tmp_path):
    with pytest.raises(SettingsError, match="CXR_CDS_SETTINGS_FILE=.*cannot read it"):
        load_settings(environ={"CXR_CDS_SETTINGS_FILE": str(tmp_path / "missing.json")})
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(SettingsError, match="CXR_CDS_SETTINGS_FILE=.*not valid json"):
        load_settings(environ={"CXR_CDS_SETTINGS_FILE": str(bad)})
    bad.write_text('{"colour": "blue"}')
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        load_settings(environ={"CXR_CDS_SETTINGS_FILE": str(bad)})


def test_settings_is_frozen():
    s = load_settings(environ={"CXR_CDS_AUTH": "none"})
    assert isinstance(s, Settings)
    with pytest.raises(AttributeError):
        s.auth = "jwt"


def test_plain_http_fhir_servers_are_refused_with_jwt_auth_except_on_loopback():
    from cds_hooks.settings import load_settings

    jwt = {"auth": "jwt", "public_url": "https://cds.example.org",
           "trusted_issuers": {"https://ehr.example.org": {"jku": ["https://ehr.example.org/jwks"]}}}
    with pytest.raises(SettingsError, match=r"CXR_CDS_FHIR_ALLOWLIST: 'http://ehr.example.org/fhir' is plain "
                                            r"http; the EHR's access token would be sent unencrypted"):
        load_settings(environ={"CXR_CDS_FHIR_ALLOWLIST": "http://ehr.example.org/fhir"}, **jwt)
    ok = load_settings(environ={"CXR_CDS_FHIR_ALLOWLIST": "https://ehr.example.org/fhir,http://127.0.0.1:8090/fhir"},
                       **jwt)
    assert ok.fhir_allowlist == ("https://ehr.example.org/fhir", "http://127.0.0.1:8090/fhir")
    dev = load_settings(environ={"CXR_CDS_FHIR_ALLOWLIST": "http://ehr.example.org/fhir"}, auth="none")
    assert dev.fhir_allowlist == ("http://ehr.example.org/fhir",)
