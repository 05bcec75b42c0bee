"""Issue 12: the hook's deadline holds whatever is slow, counted from the request's arrival.

A key host that answers in 3 s, a FHIR server that hangs, a model that takes 10 s: each hook answers
within ``CXR_CDS_DEADLINE_S`` plus the stated slack (README: about 0.5 s on an idle host; asserted
with room for a loaded 2-core test machine). What the clinician then sees is checked too.
"""
from __future__ import annotations

import threading
import time


from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import CountingGenerate, cxr_order, hook_request, mint, patient
from tests.cds_hooks.loopback import LoopbackServer

DEADLINE_S = 1.0
SLACK_S = 1.5          # generous for a loaded CI machine; the README states ~0.5 s on an idle host
ISS = "https://ehr.example.org"
SIGN = "https://cds.example.org/cds-services/cxr-ai-order-sign"


def _sign(**top):
    return hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")], **top)


def _timed(client, body, headers=None):
    started = time.monotonic()
    r = client.post("/cds-services/cxr-ai-order-sign", json=body, headers=headers or {})
    return r, time.monotonic() - started


def test_a_ten_second_model_gives_the_pending_card_at_the_deadline(make_app, engine):
    generate = CountingGenerate(engine)
    generate.gate = threading.Event()               # the model "takes" until released (10 s)
    threading.Timer(10.0, generate.gate.set).start()
    client = make_app(generate=generate, deadline_s=DEADLINE_S).test_client()
    r, elapsed = _timed(client, _sign(prefetch={"patient": patient("pat-42", "MRN0042")}))
    (card,) = check_response(r.get_json())
    assert elapsed < DEADLINE_S + SLACK_S and "in preparation" in card["summary"]
    generate.gate.set()


def test_a_hanging_fhir_server_does_not_hold_the_answer(make_app):
    fhir = LoopbackServer()
    fhir.routes["/fhir/Patient/pat-42"] = (200, patient("pat-42", "MRN0042"), 30)      # hangs for 30 s
    try:
        client = make_app(deadline_s=DEADLINE_S, fhir_allowlist=(fhir.url,), fhir_timeout_s=30).test_client()
        r, elapsed = _timed(client, _sign(fhirServer=f"{fhir.url}/fhir"))
        assert r.status_code == 200 and elapsed < DEADLINE_S + SLACK_S
        assert fhir.requests                        # it really asked the hanging server
    finally:
        fhir.close()


def test_a_slow_key_host_does_not_hold_the_answer_past_the_deadline(make_app, keys):
    jwks = LoopbackServer()
    jwks.routes["/jwks.json"] = (200, {"keys": [keys["es"][1]]}, 3.0)                  # answers in 3 s
    try:
        app = make_app(auth="jwt", trusted_issuers={ISS: {"jku": [f"{jwks.url}/jwks.json"]}},
                       deadline_s=DEADLINE_S, jwks_refresh_min_s=1)
        client = app.test_client()
        body = _sign(prefetch={"patient": patient("pat-42", "MRN0042")})
        token = mint(keys["es"][0], aud=SIGN, jku=f"{jwks.url}/jwks.json")
        r, elapsed = _timed(client, body, {"Authorization": f"Bearer {token}"})
        # the key set is not here in time: the token cannot be verified now (401), and the answer is prompt
        assert r.status_code == 401 and elapsed < DEADLINE_S + SLACK_S
        # the fetch went on beside the request: once it is in, the next call verifies without waiting for it
        time.sleep(3.5)
        token = mint(keys["es"][0], aud=SIGN, jku=f"{jwks.url}/jwks.json")
        r, elapsed = _timed(client, body, {"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and elapsed < DEADLINE_S + SLACK_S
        assert [p for p in jwks.paths() if p == "/jwks.json"] == ["/jwks.json"]          # fetched once
    finally:
        jwks.close()
