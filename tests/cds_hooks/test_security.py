"""Checklist items 49-57 and 59-60: JWT verification and CORS, through the Flask test client.

A JWKS endpoint runs on loopback; a second one, not on the allowlist, proves that a token's
attacker-chosen ``jku`` is never fetched.
"""
from __future__ import annotations

import time

import jwt
import pytest

from tests.cds_hooks.conftest import hook_request, mint, patient
from tests.cds_hooks.loopback import LoopbackServer

ISS = "https://ehr.example.org"
OOB_ISS = "https://oob.example.org"
BASE = "https://cds.example.org"
SANDBOX_ORIGIN = "https://sandbox.cds-hooks.org"      # the browser origin these tests call from (CORS)
SIGN = f"{BASE}/cds-services/cxr-ai-order-sign"


@pytest.fixture
def jwks_servers(keys):
    good, evil = LoopbackServer(), LoopbackServer()
    good.routes["/jwks.json"] = (200, {"keys": [keys["es"][1]]})
    evil.routes["/jwks.json"] = (200, {"keys": [keys["es"][1], keys["es2"][1]]})
    yield good, evil
    good.close()
    evil.close()


@pytest.fixture
def secure(make_app, jwks_servers, keys):
    good, _ = jwks_servers
    issuers = {ISS: {"jku": [f"{good.url}/jwks.json"]}, OOB_ISS: {"jwks": {"keys": [keys["rs"][1]]}},
               "https://manual-aud.example.org": {"jwks": {"keys": [keys["rs"][1]]}, "audiences": ["sand_man"]}}
    app = make_app(auth="jwt", trusted_issuers=issuers, jwks_refresh_min_s=3600, cors_origins=(SANDBOX_ORIGIN,))
    return app, app.test_client()


def _body():
    # no chest X-ray order: a valid call that needs nothing else
    return hook_request("order-sign", "pat-1", [], prefetch={"patient": patient("pat-1", "MRN-NONE")})


def _post(client, token=None, url="/cds-services/cxr-ai-order-sign", body=None, scheme="Bearer"):
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    return client.post(url, json=body or _body(), headers=headers)


def _es(keys, jwks_servers, **kw):
    if "jku" not in kw:
        kw["jku"] = f"{jwks_servers[0].url}/jwks.json"
    kw.setdefault("aud", SIGN)
    return mint(keys["es"][0], **kw)


def test_valid_es384_and_rs384_tokens_are_accepted(secure, keys, jwks_servers):
    app, client = secure
    assert _post(client, _es(keys, jwks_servers)).status_code == 200                  # 55
    rs = mint(keys["rs"][0], alg="RS384", kid="rs-1", iss=OOB_ISS, aud=SIGN)          # out-of-band JWKS
    assert _post(client, rs).status_code == 200
    assert _post(client, _es(keys, jwks_servers, aud=[SIGN])).status_code == 200      # 52: one-element array


def test_missing_or_non_bearer_authorization_is_401_without_detail(secure, keys, jwks_servers):
    app, client = secure
    for r in (_post(client), _post(client, _es(keys, jwks_servers), scheme="Basic")):  # 49
        assert r.status_code == 401 and r.data == b""                                 # 57
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = client.post("/cds-services/cxr-ai-order-sign/feedback", json={"feedback": []})
    assert r.status_code == 401 and r.data == b""


def test_alg_none_and_hs_tokens_are_refused(secure):
    app, client = secure
    claims = {"iss": ISS, "aud": SIGN, "exp": int(time.time()) + 300, "iat": int(time.time()), "jti": "n1"}
    none_token = jwt.encode(claims, None, algorithm="none", headers={"kid": "es-1"})
    hs_token = jwt.encode({**claims, "jti": "h1"}, "a-shared-secret-long-enough-for-hs384-" * 2, algorithm="HS384",
                          headers={"kid": "es-1"})
    for token in (none_token, hs_token):                                              # 50
        r = _post(client, token)
        assert r.status_code == 401 and r.data == b""


def test_untrusted_keys_issuers_and_jku_are_refused(secure, keys, jwks_servers):
    app, client = secure
    good, evil = jwks_servers
    wrong_key = mint(keys["es2"][0], kid="es-1", aud=SIGN, jku=f"{good.url}/jwks.json")   # 51: not our key
    unknown_kid = mint(keys["es"][0], kid="nope", aud=SIGN, jku=f"{good.url}/jwks.json")
    bad_iss = mint(keys["es"][0], iss="https://attacker.example", aud=SIGN, jku=f"{good.url}/jwks.json")
    evil_jku = mint(keys["es2"][0], kid="es-2", aud=SIGN, jku=f"{evil.url}/jwks.json")
    for token in (wrong_key, unknown_kid, bad_iss, evil_jku):
        assert _post(client, token).status_code == 401
    assert evil.requests == []                                  # no fetch from a non-allowlisted jku


def test_audience_must_be_the_invoked_url(secure, keys, jwks_servers):
    app, client = secure
    assert _post(client, _es(keys, jwks_servers, aud=f"{BASE}/cds-services/cxr-ai-order-select")).status_code == 401
    assert _post(client, _es(keys, jwks_servers, aud="sand_man")).status_code == 401
    # trailing slash and doubled slashes (sandbox with a typed trailing slash) are normalised
    assert _post(client, _es(keys, jwks_servers, aud=f"{BASE}/cds-services//cxr-ai-order-sign/")).status_code == 200
    # an EHR with a manually configured aud, allowed for that issuer only
    manual = mint(keys["rs"][0], alg="RS384", kid="rs-1", iss="https://manual-aud.example.org", aud="sand_man")
    assert _post(client, manual).status_code == 200
    fb = _es(keys, jwks_servers, aud=f"{SIGN}/feedback")                              # 52: feedback aud
    r = client.post("/cds-services/cxr-ai-order-sign/feedback", headers={"Authorization": f"Bearer {fb}"},
                    json={"feedback": [{"card": "c-1", "outcome": "overridden",
                                        "outcomeTimestamp": "2026-11-28T10:00:00Z"}]})
    assert r.status_code == 200


def test_expiry_and_issued_at_with_leeway(secure, keys, jwks_servers):
    app, client = secure
    assert _post(client, _es(keys, jwks_servers, exp_in=-120)).status_code == 401      # 53
    assert _post(client, _es(keys, jwks_servers, exp_in=-30)).status_code == 200       # inside 60 s leeway
    assert _post(client, _es(keys, jwks_servers, iat_in=600)).status_code == 401       # issued in the future
    no_jti = jwt.encode({"iss": ISS, "aud": SIGN, "exp": int(time.time()) + 60, "iat": int(time.time())},
                        keys["es"][0], algorithm="ES384",
                        headers={"kid": "es-1", "jku": f"{jwks_servers[0].url}/jwks.json"})
    assert _post(client, no_jti).status_code == 401


def test_replayed_jti_is_refused_by_another_app_on_the_same_store(make_app, tmp_path, keys, jwks_servers):
    good, _ = jwks_servers
    issuers = {ISS: {"jku": [f"{good.url}/jwks.json"]}}
    shared_db = tmp_path / "shared.sqlite3"          # two "worker processes" share the store file
    one = make_app(auth="jwt", trusted_issuers=issuers, db=shared_db).test_client()
    two = make_app(auth="jwt", trusted_issuers=issuers, db=shared_db).test_client()
    token = _es(keys, jwks_servers)
    assert _post(one, token).status_code == 200
    assert _post(one, token).status_code == 401                                        # 54
    assert _post(two, token).status_code == 401


def test_unknown_kid_refetches_once_per_interval(make_app, keys, jwks_servers):
    good, _ = jwks_servers
    app = make_app(auth="jwt", trusted_issuers={ISS: {"jku": [f"{good.url}/jwks.json"]}}, jwks_refresh_min_s=1)
    client = app.test_client()
    assert _post(client, _es(keys, jwks_servers)).status_code == 200
    assert good.paths() == ["/jwks.json"]                                              # cached from now on
    assert _post(client, _es(keys, jwks_servers)).status_code == 200
    assert len(good.requests) == 1
    good.routes["/jwks.json"] = (200, {"keys": [keys["es"][1], keys["es2"][1]]})       # the client rotates
    rotated = lambda: mint(keys["es2"][0], kid="es-2", aud=SIGN, jku=f"{good.url}/jwks.json")
    assert _post(client, rotated()).status_code == 401          # within the interval of the last fetch: none
    assert len(good.requests) == 1
    time.sleep(1.1)
    assert _post(client, rotated()).status_code == 200                                 # 56: one refetch
    assert len(good.requests) == 2
    forged = mint(keys["es"][0], kid="es-9", aud=SIGN, jku=f"{good.url}/jwks.json")
    assert _post(client, forged).status_code == 401
    assert len(good.requests) == 2                                                     # no second refetch


def test_discovery_needs_no_token_and_analyze_does(secure):
    app, client = secure
    assert client.get("/cds-services").status_code == 200
    r = client.post("/studies/1.2.3/analyze")
    assert r.status_code == 401 and r.data == b""


def test_cors_preflight_without_token_and_headers_on_errors(secure):
    app, client = secure
    for path in ("/cds-services", "/cds-services/cxr-ai-order-sign", "/cds-services/cxr-ai-order-sign/feedback"):
        r = client.options(path, headers={"Origin": "https://sandbox.cds-hooks.org",       # 59
                                          "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization,content-type"})
        assert 200 <= r.status_code < 300, path
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        assert "Content-Type" in r.headers["Access-Control-Allow-Headers"]
        assert "GET" in r.headers["Access-Control-Allow-Methods"] and "POST" in r.headers["Access-Control-Allow-Methods"]
    origin = {"Origin": SANDBOX_ORIGIN}
    r = client.post("/cds-services/cxr-ai-order-sign", json=_body(), headers=origin)       # 60: 401
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == SANDBOX_ORIGIN


def test_cors_origin_allowlist(make_app):
    client = make_app(cors_origins=("https://sandbox.cds-hooks.org",)).test_client()
    r = client.post("/cds-services/cxr-ai-order-sign", data="not json", content_type="application/json",
                    headers={"Origin": "https://sandbox.cds-hooks.org"})                    # 60: 400
    assert r.status_code == 400
    assert r.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    assert r.headers["Vary"] == "Origin"
    r = client.get("/cds-services", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


def _crafted(header: dict, payload: dict) -> str:
    """A JWT with any header values (PyJWT refuses to write some), and a junk signature."""
    import base64
    import json

    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{part(header)}.{part(payload)}.{base64.urlsafe_b64encode(b'x' * 96).rstrip(b'=').decode()}"


@pytest.mark.parametrize("header", [
    {"alg": "ES384", "typ": 1, "kid": "es-1"},                 # was a 500: .upper() on an int
    {"alg": "ES384", "typ": "JWT", "kid": {"k": 1}},
    {"alg": ["ES384"], "typ": "JWT", "kid": "es-1"},
    {"alg": "ES384", "typ": "JWT", "kid": "es-1", "jku": 7},
])
def test_crafted_header_types_are_401_not_500(secure, header):
    app, client = secure
    now = int(time.time())
    token = _crafted(header, {"iss": ISS, "aud": SIGN, "exp": now + 300, "iat": now, "jti": "c1"})
    r = _post(client, token)
    assert r.status_code == 401 and r.data == b""


def test_unexpected_error_during_verification_is_401(make_app, keys, caplog):
    from cds_hooks.errors import Unauthorized

    # a malformed configured JWK Set (a number where a JWK belongs) breaks key lookup: fail closed
    app = make_app(auth="jwt", trusted_issuers={OOB_ISS: {"jwks": {"keys": [5]}}})
    token = mint(keys["rs"][0], alg="RS384", kid="rs-1", iss=OOB_ISS, aud=SIGN)
    caplog.set_level("INFO", logger="cds_hooks")
    r = _post(app.test_client(), token)
    assert r.status_code == 401 and r.data == b""
    assert "JWT refused: unexpected AttributeError during verification" in caplog.text
    assert token not in caplog.text
    with pytest.raises(Unauthorized, match="unexpected AttributeError"):
        app.extensions["cxr_cds"].verifier.verify(f"Bearer {token}", SIGN)


PACS_TOKEN = "pacs-" + "0123456789abcdef" * 3


def test_pacs_token_authenticates_repeated_study_arrival_calls_only(make_app, keys, jwks_servers):
    import time as _time

    from tests.cds_hooks.conftest import ORDERED_UID

    good, _ = jwks_servers
    app = make_app(auth="jwt", trusted_issuers={ISS: {"jku": [f"{good.url}/jwks.json"]}}, pacs_token=PACS_TOKEN)
    client = app.test_client()
    url = f"/studies/{ORDERED_UID}/analyze"
    pacs = {"Authorization": f"Bearer {PACS_TOKEN}"}
    first = client.post(url, headers=pacs)
    assert first.status_code == 202
    analyzer = app.extensions["cxr_cds"].analyzer
    end = _time.monotonic() + 60
    while analyzer.in_flight and _time.monotonic() < end:
        _time.sleep(0.05)
    second = client.post(url, headers=pacs)                      # the same fixed token again: no replay check
    assert second.status_code == 200 and second.get_json()["status"] == "stored"
    for wrong in ("Bearer " + PACS_TOKEN[:-1] + "X", "Bearer ", PACS_TOKEN, "Basic " + PACS_TOKEN):
        r = client.post(url, headers={"Authorization": wrong})
        assert r.status_code == 401 and r.data == b""
    assert client.post(url).status_code == 401
    jwt_for_studies = _es(keys, jwks_servers, aud=f"{BASE}{url}")  # with the secret set, only it opens /studies
    assert client.post(url, headers={"Authorization": f"Bearer {jwt_for_studies}"}).status_code == 401
    # ... and it opens nothing else
    assert _post(client, PACS_TOKEN).status_code == 401
    r = client.post("/cds-services/cxr-ai-order-sign/feedback", headers=pacs,
                    json={"feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z"}]})
    assert r.status_code == 401


def test_without_pacs_token_studies_take_hook_jwts(secure, keys, jwks_servers):
    from tests.cds_hooks.conftest import LATERAL_UID

    app, client = secure
    url = f"/studies/{LATERAL_UID}/analyze"
    token = _es(keys, jwks_servers, aud=f"{BASE}{url}")
    assert client.post(url, headers={"Authorization": f"Bearer {token}"}).status_code == 422   # past auth
    assert client.post(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401   # jti replay
    assert client.post(url, headers={"Authorization": f"Bearer {PACS_TOKEN}"}).status_code == 401


def test_pacs_token_is_checked_in_development_mode_too(make_app):
    from tests.cds_hooks.conftest import LATERAL_UID

    client = make_app(pacs_token=PACS_TOKEN).test_client()         # auth=none
    url = f"/studies/{LATERAL_UID}/analyze"
    assert client.post(url).status_code == 401
    assert client.post(url, headers={"Authorization": f"Bearer {PACS_TOKEN}"}).status_code == 422


# --- item 54 across processes: the jti store is the SQLite file every worker process opens --------------
_WORKER = r"""
import json, sys
from pathlib import Path
from cds_hooks.app import create_app
from cds_hooks.runtime import Runtime
from cds_hooks.settings import load_settings
from cds_hooks.store import Store
from imaging import FolderSource

db, issuers, body, *tokens = sys.argv[1:]
settings = load_settings(environ={}, auth="jwt", trusted_issuers=json.loads(issuers), db=Path(db),
                         public_url="https://cds.example.org")

def no_model(request):
    raise AssertionError("this request needs no model")

runtime = Runtime(source=FolderSource(Path(db).parent / "no-images"), generate=no_model,
                  model_identity={"name": "none"}, store=Store(settings.db))
app = create_app(settings, runtime=runtime)
try:
    client = app.test_client()
    print(json.dumps([client.post("/cds-services/cxr-ai-order-sign", json=json.loads(body),
                                  headers={"Authorization": f"Bearer {t}"}).status_code for t in tokens]))
finally:
    app.extensions["cxr_cds"].close()
"""


def test_replayed_jti_is_refused_by_another_worker_process(make_app, tmp_path, keys):
    import json
    import subprocess
    import sys
    from pathlib import Path

    issuers = {ISS: {"jwks": {"keys": [keys["es"][1]]}}}        # out of band: no JWKS server needed
    shared_db = tmp_path / "shared.sqlite3"
    here = make_app(auth="jwt", trusted_issuers=issuers, db=shared_db).test_client()
    first, second = (mint(keys["es"][0], aud=SIGN) for _ in range(2))
    assert _post(here, first).status_code == 200               # used in this process
    body = _body()
    worker = subprocess.run([sys.executable, "-c", _WORKER, str(shared_db), json.dumps(issuers), json.dumps(body),
                             second, first], capture_output=True, text=True, timeout=120, check=False,
                            cwd=Path(__file__).resolve().parents[2])
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert json.loads(worker.stdout.splitlines()[-1]) == [200, 401]   # 54: the other process refuses `first`
    assert _post(here, second, body=body).status_code == 401         # ... and this one refuses its `second`


# --- item 55: the sandbox's token shape (cds-hooks/sandbox, CDS_HOOKS.md section 6.1) ----------------------
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"


@pytest.fixture(scope="module")
def sandbox_key():
    """A local ES384 key standing in for the sandbox's (published) one: its JWK carries the sandbox's kid."""
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP384R1())
    public = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    public.update(kid=SANDBOX_KID, alg="ES384", use="sig")
    return private, public


def _sandbox_token(private, aud=SIGN) -> str:
    # exactly what the sandbox sends: ES384, its kid and jku, typ JWT; iss, aud, exp = now + 300, iat,
    # jti (uuid4); no tenant, no sub, no nbf
    import uuid

    now = int(time.time())
    return jwt.encode({"iss": SANDBOX_ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())},
                      private, algorithm="ES384", headers={"kid": SANDBOX_KID, "jku": SANDBOX_JKU, "typ": "JWT"})


def _issuers_from_env(value: dict) -> dict:
    import json

    from cds_hooks.settings import load_settings

    env = {"CXR_CDS_AUTH": "jwt", "CXR_CDS_PUBLIC_URL": BASE, "CXR_CDS_TRUSTED_ISSUERS": json.dumps(value)}
    return dict(load_settings(environ=env).trusted_issuers)


@pytest.mark.parametrize("config", [
    {"jwks": "sandbox"},                                       # its JWK Set pinned (offline dev profile)
    {"jku": [SANDBOX_JKU], "jwks": "sandbox"},                 # its jku allowlisted and its keys pinned
])
def test_sandbox_token_is_accepted_when_its_issuer_is_configured(make_app, sandbox_key, config):
    private, public = sandbox_key
    config = {k: ({"keys": [public]} if v == "sandbox" else v) for k, v in config.items()}
    app = make_app(auth="jwt", trusted_issuers=_issuers_from_env({SANDBOX_ISS: config}))
    client = app.test_client()
    for aud in (SIGN, f"{BASE}/cds-services//cxr-ai-order-sign"):     # as typed, with a trailing slash
        r = _post(client, _sandbox_token(private, aud))
        assert r.status_code == 200 and r.get_json() == {"cards": []}                      # 55
    r = client.post("/cds-services/cxr-ai-order-sign/feedback", json={"feedback": [{"card": "c-1",
                    "outcome": "overridden", "outcomeTimestamp": "2026-11-28T10:00:00Z"}]},
                    headers={"Authorization": f"Bearer {_sandbox_token(private, SIGN + '/feedback')}"})
    assert r.status_code == 200
    assert app.extensions["cxr_cds"].verifier.jwks.fetches == 0      # the sandbox's jku was never fetched


def test_sandbox_token_is_refused_unless_its_issuer_and_key_are_configured(make_app, sandbox_key, keys, caplog):
    private, public = sandbox_key
    caplog.set_level("INFO", logger="cds_hooks")
    untrusted = make_app(auth="jwt", trusted_issuers=_issuers_from_env({ISS: {"jwks": {"keys": [keys["es"][1]]}}}))
    r = _post(untrusted.test_client(), _sandbox_token(private))
    assert r.status_code == 401 and r.data == b""
    assert "issuer 'https://sandbox.cds-hooks.org' is not trusted" in caplog.text
    # trusted, but pinned to another key (e.g. the real sandbox's): the signature fails
    other = {"keys": [dict(keys["es2"][1], kid=SANDBOX_KID)]}
    pinned = make_app(auth="jwt", trusted_issuers=_issuers_from_env({SANDBOX_ISS: {"jwks": other}}))
    r = _post(pinned.test_client(), _sandbox_token(private))
    assert r.status_code == 401 and "JWT from https://sandbox.cds-hooks.org refused: InvalidSignatureError" in caplog.text
    # trusted with a jku allowlist that does not name the sandbox's jku: refused without any fetch
    elsewhere = make_app(auth="jwt", trusted_issuers=_issuers_from_env(
        {SANDBOX_ISS: {"jku": ["https://jwks.example.org/sandbox.json"], "jwks": {"keys": [public]}}}))
    r = _post(elsewhere.test_client(), _sandbox_token(private))
    assert r.status_code == 401 and "jku is not on the allowlist of issuer https://sandbox.cds-hooks.org" in caplog.text
    for app in (untrusted, pinned, elsewhere):
        assert app.extensions["cxr_cds"].verifier.jwks.fetches == 0


# --- issue 11: key sets by normalised URL, single flight, bounded waits, bounded cache; token lifetime ---------
def _spellings(url: str) -> list[str]:
    """12 spellings of one allowlisted JWK Set URL that normalise to it (case, default port, slashes)."""
    scheme, rest = url.split("://")
    host, path = rest.split("/", 1)
    return [f"{scheme}://{host}/{path}", f"{scheme.upper()}://{host}/{path}", f"{scheme}://{host}//{path}",
            f"{scheme}://{host}/{path}/", f"{scheme}://{host}/{path}//", f"{scheme}://{host}///{path}",
            f"HtTp://{host}/{path}", f"{scheme}://{host}/{path}?", f"{scheme}://{host}//{path}/",
            f"{scheme}://{host}/{path}///", f"{scheme.upper()}://{host}//{path}//", f"http://{host}/{path}#frag"]


def test_normalise_url_spellings():
    from cds_hooks.security import normalise_url

    assert normalise_url("HTTPS://Keys.Example.ORG:443//jwks//set.json/") == "https://keys.example.org/jwks/set.json"
    assert normalise_url("http://127.0.0.1:80/a") == "http://127.0.0.1/a"
    assert normalise_url("http://127.0.0.1:8080/a") == "http://127.0.0.1:8080/a"
    assert normalise_url("https://keys.example.org/jwks?v=1") != normalise_url("https://keys.example.org/jwks?v=2")
    assert normalise_url("sand_man") == "sand_man"                     # a manually configured aud


def _parallel(calls):
    import threading

    results = [None] * len(calls)

    def run(i, call):
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_spelling_variants_of_an_allowlisted_jku_make_one_fetch_per_interval(make_app, keys):
    slow = LoopbackServer()
    slow.routes["/jwks.json"] = (200, {"keys": [keys["es"][1]]}, 1.0)      # a slow key host
    try:
        url = f"{slow.url}/jwks.json"
        app = make_app(auth="jwt", trusted_issuers={ISS: {"jku": [url]}}, jwks_refresh_min_s=3600)
        variants = _spellings(url)
        assert len(set(variants)) == 12
        # 12 unsigned tokens (a forged kid, junk signature) with the 12 spellings, all at once
        now = int(time.time())
        forged = [_crafted({"alg": "ES384", "typ": "JWT", "kid": f"forged-{i}", "jku": v},
                           {"iss": ISS, "aud": SIGN, "exp": now + 300, "iat": now, "jti": f"f{i}"})
                  for i, v in enumerate(variants)]
        statuses = _parallel([lambda t=t: _post(app.test_client(), t).status_code for t in forged])
        assert statuses == [401] * 12
        assert slow.paths() == ["/jwks.json"]                               # was 12 (one per spelling)
        # valid tokens with every spelling: served from the one cached set, no further fetch
        valid = [_es(keys, None, jku=v) for v in variants]
        assert [_post(app.test_client(), t).status_code for t in valid] == [200] * 12
        assert slow.paths() == ["/jwks.json"]
    finally:
        slow.close()


def test_a_slow_key_host_of_one_issuer_does_not_delay_another_issuer(make_app, keys):
    slow, fast = LoopbackServer(), LoopbackServer()
    delay = 1.5                                      # under the fetch's 2 s read timeout: it succeeds
    slow.routes["/jwks.json"] = (200, {"keys": [keys["es"][1]]}, delay)
    fast.routes["/b.json"] = (200, {"keys": [keys["rs"][1]]})          # issuer B's key set: a remote one too
    try:
        issuers = {ISS: {"jku": [f"{slow.url}/jwks.json"]}, OOB_ISS: {"jwks_url": f"{fast.url}/b.json"}}
        app = make_app(auth="jwt", trusted_issuers=issuers, jwks_refresh_min_s=3600)
        variants = _spellings(f"{slow.url}/jwks.json")
        slow_calls = [lambda v=v: _post(app.test_client(), _es(keys, None, jku=v)).status_code for v in variants]

        def other_issuer():
            time.sleep(0.3)                                              # while A's fetch hangs
            started = time.monotonic()
            token = mint(keys["rs"][0], alg="RS384", kid="rs-1", iss=OOB_ISS, aud=SIGN)
            status = _post(app.test_client(), token).status_code
            return status, time.monotonic() - started

        *slow_statuses, (status, elapsed) = _parallel(slow_calls + [other_issuer])
        assert status == 200 and elapsed < delay                         # was 9 s behind one global lock
        assert slow_statuses == [200] * 12 and slow.paths() == ["/jwks.json"] and fast.paths() == ["/b.json"]
    finally:
        slow.close()
        fast.close()


def test_verify_waits_for_a_key_set_no_longer_than_its_budget(make_app, keys):
    from cds_hooks.errors import Unauthorized

    slow = LoopbackServer()
    slow.routes["/jwks.json"] = (200, {"keys": [keys["es"][1]]}, 1.2)
    try:
        url = f"{slow.url}/jwks.json"
        app = make_app(auth="jwt", trusted_issuers={ISS: {"jku": [url]}}, jwks_refresh_min_s=3600)
        verifier = app.extensions["cxr_cds"].verifier
        started = time.monotonic()
        with pytest.raises(Unauthorized, match=r"did not answer within 0\.3 s"):
            verifier.verify(f"Bearer {_es(keys, None, jku=url)}", SIGN, wait_s=0.3)
        assert time.monotonic() - started < 1.5
        time.sleep(1.5)                                                   # the fetch went on beside
        assert verifier.verify(f"Bearer {_es(keys, None, jku=url)}", SIGN, wait_s=0.0)["iss"] == ISS
        assert slow.paths() == ["/jwks.json"]
    finally:
        slow.close()


def test_the_key_set_cache_is_bounded_and_refreshed_in_the_background(keys):
    from cds_hooks.security import JwksCache

    server = LoopbackServer()
    for name in ("a", "b", "c"):
        server.routes[f"/{name}.json"] = (200, {"keys": [keys["es"][1]]})
    try:
        cache = JwksCache(ttl_s=300, refresh_min_s=0, max_urls=2)
        for name in ("a", "b", "c", "c", "a"):                      # "a" was evicted by "c": fetched again
            assert cache.key(f"{server.url}/{name}.json", "es-1")["kid"] == "es-1"
        assert server.paths() == ["/a.json", "/b.json", "/c.json", "/a.json"]
        cache.close()
        refreshed = JwksCache(ttl_s=1, refresh_min_s=0)
        refreshed.key(f"{server.url}/b.json", "es-1")
        end = time.monotonic() + 6
        while server.paths().count("/b.json") < 3 and time.monotonic() < end:
            time.sleep(0.1)
        assert server.paths().count("/b.json") >= 3                  # 1 on demand + refreshed before expiry
        refreshed.close()
    finally:
        server.close()


@pytest.mark.parametrize("claims, ok", [
    ({"exp_in": 3500}, True),
    ({"exp_in": 3700}, False),                                   # lifetime over CXR_CDS_JWT_MAX_LIFETIME_S
    ({"exp_in": 10 * 365 * 86400}, False),                       # ten years ahead: was accepted
])
def test_token_lifetime_is_bounded(secure, keys, jwks_servers, claims, ok):
    app, client = secure
    assert (_post(client, _es(keys, jwks_servers, **claims)).status_code == 200) is ok


def test_token_lifetime_setting(make_app, keys):
    app = make_app(auth="jwt", trusted_issuers={OOB_ISS: {"jwks": {"keys": [keys["rs"][1]]}}}, jwt_max_lifetime_s=600)
    client = app.test_client()
    assert _post(client, mint(keys["rs"][0], alg="RS384", kid="rs-1", iss=OOB_ISS, aud=SIGN, exp_in=500)).status_code == 200
    assert _post(client, mint(keys["rs"][0], alg="RS384", kid="rs-1", iss=OOB_ISS, aud=SIGN, exp_in=900)).status_code == 401


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_time_claims_must_be_numbers(make_app, keys, caplog, claim):
    app = make_app(auth="jwt", trusted_issuers={OOB_ISS: {"jwks": {"keys": [keys["rs"][1]]}}})
    caplog.set_level("INFO", logger="cds_hooks")
    now = int(time.time())
    payload = {"iss": OOB_ISS, "aud": SIGN, "exp": now + 300, "iat": now, "nbf": now, "jti": f"t-{claim}"}
    payload[claim] = str(payload[claim])                                       # "exp": "1767225600"
    token = jwt.encode(payload, keys["rs"][0], algorithm="RS384", headers={"kid": "rs-1", "typ": "JWT"})
    r = _post(app.test_client(), token)
    assert r.status_code == 401 and r.data == b""
    assert f"claim {claim} is not a number (NumericDate)" in caplog.text
