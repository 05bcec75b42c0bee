"""Checklist items 49, 54, 57, 59 and 60 through a real gunicorn (`cxr-cds serve`) with JWT auth on.

The EHR's JWK Set is served on loopback and named by the token's allowlisted ``jku``; the token
(ES384) is minted here. The test-client versions of these checks are in test_security.py; this one
shows the served process wires them the same way (one gunicorn start, no Orthanc needed: the call
carries no chest X-ray order).
"""
from __future__ import annotations

import json

import requests

from tests.cds_hooks.conftest import hook_request, mint, patient
from tests.cds_hooks.loopback import LoopbackServer
from tests.cds_hooks.serving import free_port, served

ISS = "https://ehr.example.org"
ORIGIN = "https://sandbox.cds-hooks.org"


def test_gunicorn_with_jwt_auth(study_folder, tiny_model_dir, keys, tmp_path):
    jwks = LoopbackServer()
    jwks.routes["/jwks.json"] = (200, {"keys": [keys["es"][1]]})
    port = free_port()
    base = f"http://127.0.0.1:{port}"                       # the public URL: what `aud` must name
    env = {"CXR_CDS_AUTH": "jwt", "CXR_CDS_PUBLIC_URL": base,
           "CXR_CDS_TRUSTED_ISSUERS": json.dumps({ISS: {"jku": [f"{jwks.url}/jwks.json"]}}),
           "CXR_CDS_CORS_ORIGINS": ORIGIN, "CXR_CDS_DICOM_FOLDER": str(study_folder),
           "CXR_CDS_MODEL": str(tiny_model_dir), "CXR_CDS_DEVICE": "cpu", "CXR_CDS_SCORES": "false",
           "CXR_CDS_DB": str(tmp_path / "cds.sqlite3"), "CXR_CDS_MAX_NEW_TOKENS": "12"}
    body = hook_request("order-sign", "pat-1", [], prefetch={"patient": patient("pat-1", "MRN-NONE")})
    try:
        with served(env, tmp_path, port=port) as url:
            sign = f"{url}/cds-services/cxr-ai-order-sign"
            token = mint(keys["es"][0], aud=sign, jku=f"{jwks.url}/jwks.json")
            bearer = {"Authorization": f"Bearer {token}", "Origin": ORIGIN}
            r = requests.post(sign, json=body, headers=bearer, timeout=30)
            assert r.status_code == 200 and r.json() == {"cards": []}
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert requests.post(sign, json=body, headers=bearer, timeout=30).status_code == 401   # 54: replay
            r = requests.post(sign, json=body, headers={"Origin": ORIGIN}, timeout=30)             # 49: no token
            assert r.status_code == 401 and r.content == b""                                       # 57
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN and r.headers["Vary"] == "Origin"  # 60
            r = requests.options(sign, timeout=30, headers={                                          # 59
                "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type"})
            assert 200 <= r.status_code < 300 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert {"Authorization", "Content-Type"} <= {h.strip() for h in
                                                         r.headers["Access-Control-Allow-Headers"].split(",")}
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            r = requests.get(f"{url}/cds-services", headers={"Origin": "https://evil.example"}, timeout=30)
            assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
        assert jwks.paths() == ["/jwks.json"]                 # fetched once by the worker, then cached
    finally:
        jwks.close()
    log = (tmp_path / "serve.log").read_text()
    assert "401 on /cds-services/cxr-ai-order-sign: no Bearer token" in log     # the reason: logged, not sent
    assert "was already used (replay)" in log and token not in log
