"""Issue 11: every malformed request is a 4xx OperationOutcome naming the field; rejections are logged and
counted; identifiers stay out of logs; /metrics takes a credential; CORS names its origins.

Through the Flask test client (an empty image folder: no request here needs the model), and a served
instance (gunicorn) for the chunked bodies the test client cannot send.
"""
from __future__ import annotations

import copy
import json
import logging

import pytest
import requests

from tests.cds_hooks.conftest import EXAMPLE_A, hook_request, patient

SIGN = "/cds-services/cxr-ai-order-sign"
SELECT = "/cds-services/cxr-ai-order-select"
VIEW = "/cds-services/cxr-ai-patient-view"
FEEDBACK = f"{SIGN}/feedback"
ORIGIN = "https://sandbox.cds-hooks.org"
METRICS_TOKEN = "metrics-" + "0123456789abcdef" * 3


@pytest.fixture
def bare(make_app, tmp_path):
    """An app over an empty image folder (no study is ever found, so no model runs)."""
    from imaging import FolderSource

    (tmp_path / "no-images").mkdir()

    def make(**settings):
        return make_app(source=FolderSource(tmp_path / "no-images"), **settings)
    return make


def _outcome(r) -> str:
    body = r.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"
    return body["issue"][0]["diagnostics"]


def _sign_body() -> dict:
    return hook_request("order-sign", "pat-1", [], prefetch={"patient": patient("pat-1", "MRN-NONE")})


def _metric(client, status: int, reason: str, headers=None) -> float:
    text = client.get("/metrics", headers=headers or {}).get_data(as_text=True)
    for line in text.splitlines():
        if line.startswith("cxr_cds_rejected_requests_total{") and f'status="{status}"' in line \
                and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- depth, text, JSON --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [SIGN, FEEDBACK])
def test_deeply_nested_json_is_400_before_parsing(bare, path):
    client = bare().test_client()
    deep = "[" * 2000 + "]" * 2000                              # was a 500 (RecursionError)
    r = client.post(path, data=deep, content_type="application/json")
    assert r.status_code == 400 and "deeper than 64 levels" in _outcome(r)
    inside = json.dumps(_sign_body())[:-1] + ', "extension": ' + "{\"a\": " * 100 + "1" + "}" * 100 + "}"
    r = client.post(SIGN, data=inside, content_type="application/json")
    assert r.status_code == 400 and "deeper than 64 levels" in _outcome(r)
    brackets_in_strings = _sign_body() | {"note": "[" * 5000}  # brackets inside a string are text
    assert client.post(SIGN, json=brackets_in_strings).status_code == 200


def test_invalid_utf8_and_non_json_numbers_are_400(bare):
    client = bare().test_client()
    raw = json.dumps(_sign_body()).encode().replace(b"pat-1", b"pat-\xff", 1)
    r = client.post(SIGN, data=raw, content_type="application/json")
    assert r.status_code == 400 and "not valid UTF-8 (byte 0xff" in _outcome(r)
    r = client.post(SIGN, data=json.dumps(_sign_body())[:-1] + ', "x": NaN}', content_type="application/json")
    assert r.status_code == 400 and "NaN is not a JSON number" in _outcome(r)
    r = client.post(SIGN, data="{oops", content_type="application/json")
    assert r.status_code == 400 and "request body is not a JSON object: not valid JSON" in _outcome(r)


@pytest.mark.parametrize("where, field", [
    (("hookInstance",), "hookInstance"),                           # was: a "service failed" card, no audit row
    (("context", "userId"), "context.userId"),
    (("prefetch", "patient", "name", 0, "family"), "prefetch.patient.name[0].family"),
])
def test_lone_surrogate_in_a_hook_field_is_400_naming_it(bare, where, field):
    client = bare().test_client()
    body = _sign_body()
    target = body
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = "\ud800"
    raw = json.dumps(body)                                         # ensure_ascii: the escape "\\ud800"
    assert "\\ud800" in raw
    r = client.post(SIGN, data=raw, content_type="application/json")
    assert r.status_code == 400
    assert _outcome(r).startswith(f"{field} holds a lone UTF-16 surrogate")


def test_lone_surrogate_in_feedback_is_400_and_a_pair_is_fine(bare):
    client = bare().test_client()
    item = {"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z"}
    for bad, field in ((dict(item, card="\udc00"), "feedback[0].card"),                 # was a 500
                       (dict(item, overrideReason={"userComment": "x\ud800"}), "feedback[0].overrideReason.userComment"),
                       (dict(item, overrideReason={"reason": {"code": "\udbff", "system": "s"}}),
                        "feedback[0].overrideReason.reason.code")):
        r = client.post(FEEDBACK, data=json.dumps({"feedback": [bad]}), content_type="application/json")
        assert r.status_code == 400 and _outcome(r).startswith(f"{field} holds a lone UTF-16 surrogate")
    paired = dict(item, overrideReason={"userComment": "fine \ud83d\ude00"})              # a valid pair
    r = client.post(FEEDBACK, data=json.dumps({"feedback": [paired]}), content_type="application/json")
    assert r.status_code == 200 and r.get_json() == {"received": 1, "stored": 1}


# --- schema: wrongly typed fields are 400, never an "analysis failed (TypeError)" card --------------------
def _full_requests() -> dict[str, dict]:
    """Example A with every kind of field filled, as order-select, order-sign and patient-view."""
    select = copy.deepcopy(EXAMPLE_A)
    select["prefetch"]["conditions"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "Condition", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "42343007",
                                                          "display": "CHF"}], "text": "CHF"},
        "clinicalStatus": {"coding": [{"code": "active"}]}, "subject": {"reference": "Patient/pat-42"}}}]}
    select["prefetch"]["encounter"] = {"resourceType": "Encounter", "id": "enc-9", "status": "in-progress",
                                       "class": {"code": "IMP"}}
    order = select["context"]["draftOrders"]["entry"][0]["resource"]
    order["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "ACSN"}]}, "value": "ACC-NOPE"}]
    sign = copy.deepcopy(select)
    sign["hook"] = "order-sign"
    del sign["context"]["selections"]
    view = copy.deepcopy(sign)
    view["hook"] = "patient-view"
    del view["context"]["draftOrders"]
    return {SELECT: select, SIGN: sign, VIEW: view}


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, path + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, path + (i,))


def _with(body: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(body)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def test_no_wrongly_typed_field_gets_a_failure_card_or_a_500(bare):
    client = bare().test_client()
    tried, problems = 0, []
    for url, body in _full_requests().items():
        for path in list(_paths(body))[1:]:
            for value in (7, "x", [], {}, None, True, [7]):
                r = client.post(url, json=_with(body, path, value))
                tried += 1
                text = r.get_data(as_text=True)
                if r.status_code >= 500 or (r.status_code == 200 and "failed (" in text):
                    problems.append((url, path, value, r.status_code, text[:120]))
    assert tried > 900 and not problems, problems[:10]


@pytest.mark.parametrize("url, path, value, message", [
    # the fields that gave 200 "analysis failed (TypeError)" cards
    (SIGN, ("context", "draftOrders", "entry", 0, "resource", "code", "coding"), 7,
     "context.draftOrders.entry[0].resource.code.coding must be an array, got a number"),
    (SELECT, ("context", "draftOrders", "entry", 0, "resource", "code", "coding"), True,
     "context.draftOrders.entry[0].resource.code.coding must be an array, got a boolean"),
    (VIEW, ("prefetch", "conditions", "entry"), 1.5, "prefetch.conditions.entry must be an array, got a number"),
    (SIGN, ("fhirAuthorization", "expires_in"), "30", "fhirAuthorization.expires_in must be a number, got a string"),
    (SIGN, ("context", "userId"), ["u"], "context.userId must be a string, got an array"),
    (SELECT, ("context", "selections"), [7], "context.selections must be an array of strings"),
    (SIGN, ("prefetch", "patient", "identifier", 0, "value"), 42,
     "prefetch.patient.identifier[0].value must be a string, got a number"),
    (VIEW, ("prefetch", "encounter"), "enc-9", "prefetch.encounter must be an object or null, got a string"),
    (SIGN, ("hookInstance",), "x" * 200, "hookInstance is longer than 128 characters"),
])
def test_wrongly_typed_fields_are_400_naming_the_field(bare, url, path, value, message):
    body = _full_requests()[url]
    r = bare().test_client().post(url, json=_with(body, path, value))
    assert r.status_code == 400 and _outcome(r).startswith(message), _outcome(r)


def test_unknown_fields_and_other_prefetch_keys_stay_tolerated(bare):
    body = _full_requests()[SIGN]
    body.update(extension={"com.example": [1, {"x": None}]})
    body["prefetch"]["extra"] = "not read, not checked"
    body["context"]["draftOrders"]["entry"][0]["resource"]["code"]["concept"] = {"text": "R5 shape"}
    r = bare(deadline_s=10).test_client().post(SIGN, json=body)
    assert r.status_code == 200


# --- size and media type ----------------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml",
                                          "application/json; charset=latin-1", None])
def test_a_body_not_declared_as_utf8_json_is_415(bare, content_type):
    client = bare(cors_origins=(ORIGIN,)).test_client()
    headers = {"Origin": ORIGIN} | ({"Content-Type": content_type} if content_type else {})
    for path in (SIGN, FEEDBACK):
        r = client.post(path, data=json.dumps(_sign_body()), headers=headers)
        assert r.status_code == 415 and "send the body as application/json" in _outcome(r) \
            or "encoded as UTF-8" in _outcome(r)
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN       # a browser can read the 415


@pytest.mark.parametrize("content_type", ["application/json", "application/json;charset=UTF-8",
                                          "application/fhir+json", "Application/JSON"])
def test_json_media_types_are_accepted(bare, content_type):
    # the CDS Hooks sandbox (axios) sends application/json
    r = bare().test_client().post(SIGN, data=json.dumps(_sign_body()), headers={"Content-Type": content_type})
    assert r.status_code == 200 and r.get_json() == {"cards": []}


def test_study_arrival_needs_no_body(bare):
    from tests.cds_hooks.conftest import ORDERED_UID

    r = bare().test_client().post(f"/studies/{ORDERED_UID}/analyze")      # a PACS script: no body, no type
    assert r.status_code != 415


# --- rejected requests: one log line each, and a counter by reason -------------------------------------------
def test_each_rejected_request_is_logged_once_and_counted(bare, caplog):
    app = bare(auth="jwt", trusted_issuers={"https://ehr.example.org": {"jwks": {"keys": []}}},
               metrics_token=METRICS_TOKEN, max_request_bytes=4096)
    client = app.test_client()
    scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    caplog.set_level("INFO", logger="cds_hooks")
    cases = [
        (lambda: client.post(SIGN, json=_sign_body(), headers={"Authorization": "Bearer eyJ.eyJ.x"}), 401,
         "unauthorized"),
        (lambda: client.post("/cds-services/nope", json=_sign_body()), 404, "not-found"),
        (lambda: client.post(SIGN, data="x", content_type="text/plain"), 415, "unsupported-media-type"),
        (lambda: client.post(SIGN, json=_sign_body() | {"pad": "x" * 5000}), 413, "too-large"),
        (lambda: client.get("/metrics"), 401, "unauthorized"),
    ]
    for call, status, reason in cases:
        before = _metric(client, status, reason, scrape)
        caplog.clear()
        r = call()
        assert r.status_code == status
        lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith(f"{status} on ")]
        assert len(lines) == 1, (status, caplog.text)
        assert _metric(client, status, reason, scrape) == before + 1
    assert "eyJ.eyJ.x" not in caplog.text


def test_400_and_412_are_logged_with_the_field_not_the_value(bare, caplog):
    client = bare().test_client()
    caplog.set_level("INFO", logger="cds_hooks")
    body = _sign_body()
    body["context"]["userId"] = ["MRN0042"]
    r = client.post(SIGN, json=body)
    assert r.status_code == 400
    (line,) = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("400 on ")]
    assert line == "400 on /cds-services/<service_id>: schema (context.userId)"
    caplog.clear()
    r = client.post(VIEW, json=hook_request("patient-view", "pat-1", []))           # no Patient anywhere
    assert r.status_code == 412
    assert [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("412 on ")] == [
        "412 on /cds-services/<service_id>: precondition-failed"]
    assert "cxr_cds_rejected_requests_total" in client.get("/metrics").get_data(as_text=True)


# --- identifiers in log lines ---------------------------------------------------------------------------------
def test_hook_instance_is_logged_as_a_checked_token(bare, caplog):
    from cds_hooks.redact import hook_instance_tag

    client = bare().test_client()
    caplog.set_level("INFO", logger="cds_hooks")
    forged = "x\n2026-01-01 INFO cds_hooks.hooks: forged line MRN0042"
    body = hook_request("patient-view", "pat-1", [], prefetch={
        "patient": patient("pat-1", "MRN-NONE"),
        "conditions": {"resourceType": "Bundle", "entry": [], "link": [{"relation": "next", "url": "p2"}]}})
    body["hookInstance"] = forged
    assert client.post(VIEW, json=body).status_code == 200
    (line,) = [rec.getMessage() for rec in caplog.records if "is paginated" in rec.getMessage()]
    assert line.startswith(f"hookInstance={hook_instance_tag(forged)} prefetch conditions is paginated")
    assert hook_instance_tag(forged).startswith("h:") and "\n" not in line and "forged" not in line
    uuid_instance = "6F0A2C1E-9B7D-4E3A-8C55-0D1E2F3A4B5C"
    assert hook_instance_tag(uuid_instance) == uuid_instance.lower()                # a UUID: as is


def test_accession_numbers_are_logged_as_a_keyed_hash(bare, caplog, monkeypatch):
    from cds_hooks import redact

    bare()                                                         # create_app installs the filter
    caplog.set_level("INFO", logger="cds_hooks")
    logging.getLogger("cds_hooks.hooks").warning("no study in PACS matches AccessionNumber ACC0042 and StudyDate x")
    assert "ACC0042" not in caplog.text
    assert f"AccessionNumber {redact.accession_tag('ACC0042')} and StudyDate" in caplog.text
    redact.set_log_key("a-deployment-key-shared-by-every-process")
    one = redact.accession_tag("ACC0042")
    redact.set_log_key("another-deployment-key-of-some-length")
    assert redact.accession_tag("ACC0042") != one and one.startswith("acc:") and len(one) == 16
    redact.set_log_key("a-deployment-key-shared-by-every-process")
    assert redact.accession_tag("ACC0042") == one                  # stable for one key: lines correlate
    redact.set_log_key(None)


# --- /metrics credential --------------------------------------------------------------------------------------
def test_metrics_needs_its_token_with_jwt_auth(bare):
    issuers = {"https://ehr.example.org": {"jwks": {"keys": []}}}
    closed = bare(auth="jwt", trusted_issuers=issuers).test_client()
    r = closed.get("/metrics")
    assert r.status_code == 401 and r.data == b""                  # no token set, not public: closed
    tokened = bare(auth="jwt", trusted_issuers=issuers, metrics_token=METRICS_TOKEN).test_client()
    assert tokened.get("/metrics").status_code == 401
    assert tokened.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}x"}).status_code == 401
    r = tokened.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200 and "cxr_cds_hook_latency_seconds" in r.get_data(as_text=True)
    public = bare(auth="jwt", trusted_issuers=issuers, metrics_public=True).test_client()
    assert public.get("/metrics").status_code == 200
    assert bare().test_client().get("/metrics").status_code == 200      # auth none (development): open


def test_metrics_settings_are_read_from_the_environment():
    from cds_hooks.settings import load_settings

    s = load_settings(environ={"CXR_CDS_AUTH": "none", "CXR_CDS_METRICS_TOKEN": METRICS_TOKEN,
                               "CXR_CDS_METRICS_PUBLIC": "true", "CXR_CDS_JWT_MAX_LIFETIME_S": "600"})
    assert s.metrics_token == METRICS_TOKEN and s.metrics_public and s.jwt_max_lifetime_s == 600
    assert METRICS_TOKEN not in repr(s)


# --- CORS -----------------------------------------------------------------------------------------------------
def test_cors_is_off_by_default_and_never_a_wildcard(bare):
    client = bare().test_client()
    for origin in (ORIGIN, "https://evil.example", "null"):
        r = client.post(SIGN, json=_sign_body(), headers={"Origin": origin,
                                                          "Access-Control-Request-Private-Network": "true"})
        assert r.status_code == 200
        assert "Access-Control-Allow-Origin" not in r.headers
        assert "Access-Control-Allow-Private-Network" not in r.headers


def test_cors_origins_and_private_network_grant_for_listed_origins_only(bare):
    local = "http://127.0.0.1:8765"                              # the sandbox served on loopback
    client = bare(cors_origins=(ORIGIN, local)).test_client()
    pna = {"Access-Control-Request-Private-Network": "true", "Access-Control-Request-Method": "POST"}
    for origin in (ORIGIN, local):
        r = client.options(SIGN, headers={"Origin": origin} | pna)
        assert r.headers["Access-Control-Allow-Origin"] == origin and r.headers["Vary"] == "Origin"
        assert r.headers["Access-Control-Allow-Private-Network"] == "true"
    r = client.options(SIGN, headers={"Origin": "https://evil.example"} | pna)
    assert "Access-Control-Allow-Origin" not in r.headers
    assert "Access-Control-Allow-Private-Network" not in r.headers


def test_cors_wildcard_setting_is_refused():
    from cds_hooks.errors import SettingsError
    from cds_hooks.settings import load_settings

    with pytest.raises(SettingsError, match=r"CXR_CDS_CORS_ORIGINS='\*' is not valid: '\*' is not an origin"):
        load_settings(environ={"CXR_CDS_AUTH": "none", "CXR_CDS_CORS_ORIGINS": "*"})
    with pytest.raises(SettingsError, match="is not an origin"):
        load_settings(environ={"CXR_CDS_AUTH": "none", "CXR_CDS_CORS_ORIGINS": "https://a.example/path"})
    s = load_settings(environ={"CXR_CDS_AUTH": "none", "CXR_CDS_CORS_ORIGINS": "https://A.example/, http://127.0.0.1:9"})
    assert s.cors_origins == ("https://a.example", "http://127.0.0.1:9")


# --- a served instance: chunked bodies ------------------------------------------------------------------------
def test_served_chunked_bodies_over_the_limit_are_413(study_folder, tiny_model_dir, tmp_path):
    from tests.cds_hooks.serving import served

    env = {"CXR_CDS_AUTH": "none", "CXR_CDS_DICOM_FOLDER": str(study_folder), "CXR_CDS_MODEL": str(tiny_model_dir),
           "CXR_CDS_DEVICE": "cpu", "CXR_CDS_SCORES": "false", "CXR_CDS_DB": str(tmp_path / "cds.sqlite3"),
           "CXR_CDS_MAX_NEW_TOKENS": "12", "CXR_CDS_MAX_REQUEST_BYTES": "65536", "CXR_CDS_CORS_ORIGINS": ORIGIN}

    def chunks(data: bytes, size: int = 8192):
        for i in range(0, len(data), size):            # a generator body: requests sends it chunked
            yield data[i:i + size]

    with served(env, tmp_path) as url:
        big = json.dumps(_sign_body() | {"pad": "x" * 200_000}).encode()
        r = requests.post(f"{url}{SIGN}", data=chunks(big), timeout=30,
                          headers={"Content-Type": "application/json", "Origin": ORIGIN})
        assert r.request.headers.get("Transfer-Encoding") == "chunked"
        assert r.status_code == 413 and "CXR_CDS_MAX_REQUEST_BYTES=65536" in _outcome_json(r.json())   # was 400
        small = json.dumps(_sign_body()).encode()
        r = requests.post(f"{url}{SIGN}", data=chunks(small, 64), timeout=30,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json() == {"cards": []}
        r = requests.post(f"{url}{SIGN}", data=chunks(b"[" * 3000 + b"]" * 3000), timeout=30,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "deeper than 64 levels" in _outcome_json(r.json())
        r = requests.post(f"{url}{SIGN}", data=json.dumps(_sign_body()), timeout=30, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
    log = (tmp_path / "serve.log").read_text()
    assert "413 on /cds-services/<service_id>: too-large" in log and "415 on /cds-services/<service_id>" in log


def _outcome_json(body: dict) -> str:
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def test_parse_feedback_refuses_lone_surrogates_from_any_caller():
    from cds_hooks.errors import InvalidField
    from cds_hooks.feedback import parse_feedback

    item = {"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z",
            "overrideReason": {"userComment": "\udfff"}}
    with pytest.raises(InvalidField, match=r"feedback\[0\]\.overrideReason\.userComment holds a lone UTF-16 surrogate"):
        parse_feedback({"feedback": [item]})


def test_scrub_hashes_accession_values_and_leaves_prose():
    from cds_hooks.redact import accession_tag, scrub

    assert scrub("no study matches AccessionNumber ACC0042 and StudyDate 2026") == \
        f"no study matches AccessionNumber {accession_tag('ACC0042')} and StudyDate 2026"
    assert scrub("accession_number=DEMO-ACC-0001;") == f"accession_number={accession_tag('DEMO-ACC-0001')};"
    prose = "the study found for an order's accession number belongs to another patient"
    assert scrub(prose) == prose
