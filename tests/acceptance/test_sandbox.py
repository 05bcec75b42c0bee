"""The public CDS Hooks sandbox (a real EHR-side client we did not write) against our served service (issue 13).

Served on loopback: the sandbox's built site (read-only, in place: ``<repo>/../shared/sandbox/site``),
our service under gunicorn with JWT on (the sandbox's issuer trusted with the JWK Set pinned from
its ``.well-known/jwks.json``, never its ``jku``), and a FHIR server answered by the browser
harness (route fulfilment; the sandbox's FHIR traffic only). Headless Debian Chromium drives it:
patient-view and a chest X-ray order on the PAMA screen render our cards, the review link opens
the review page, and Dismiss, an override reason and accept reach our feedback store.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from cds_hooks.settings import settings_names
from tests.cds_hooks.conftest import patient
from tests.cds_hooks.serving import free_port, served
from tests.support.browser import SCREENSHOTS, launch, playwright_or_skip, watch_console

SITE = Path(__file__).resolve().parents[2].parent / "shared" / "sandbox" / "site"
ISSUER = "https://sandbox.cds-hooks.org"
CXR = {"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"}
FIND_STORE = """() => {
  const root = document.getElementById('root');
  const key = Object.keys(root).find(k => k.startsWith('__reactContainer') || k.startsWith('__reactFiber'));
  const queue = [root[key]];
  while (queue.length) {
    const n = queue.shift();
    if (!n) continue;
    const p = n.memoizedProps;
    if (p && p.store && typeof p.store.dispatch === 'function' && typeof p.store.getState === 'function') {
      window.__sandboxStore = p.store; return true;
    }
    if (n.child) queue.push(n.child);
    if (n.sibling) queue.push(n.sibling);
  }
  return false;
}"""
EXCHANGE = "url => { const e = window.__sandboxStore.getState().serviceExchangeState.exchanges[url]; " \
           "return e ? JSON.stringify(e.response || null) : null; }"


@pytest.fixture
def sandbox_site():
    """The sandbox's static site on loopback (``python -m http.server``), stopped by its PID."""
    if not (SITE / "index.html").is_file():
        pytest.skip(f"the CDS Hooks sandbox build is not at {SITE} (it ships in the project's shared/ folder "
                    "beside the checkout; see shared/sandbox/README.md)")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(SITE)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"{url}/index.html", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            proc.wait(timeout=0.1) if proc.poll() is not None else None
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _fhir(fhir_base: str):
    """The EHR's FHIR server, answered in the browser: metadata, the Patient (MRN0042), no Conditions."""
    pat = patient("pat-42", "MRN0042")
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    answers = {"/metadata": {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                             "fhirVersion": "4.0.1", "format": ["json"], "date": "2026-11-28"},
               "/Patient": {**empty, "total": 1, "entry": [{"resource": pat}]},
               "/Patient/pat-42": pat}

    def handle(route):
        path = route.request.url.removeprefix(fhir_base).split("?", 1)[0]
        body = answers.get(path, empty if path.endswith(("/_search", "Condition")) else None)
        if route.request.method == "OPTIONS":
            route.fulfill(status=204, headers={"Access-Control-Allow-Origin": "*",
                                               "Access-Control-Allow-Headers": "*", "Access-Control-Allow-Methods": "*"})
        elif body is None:
            route.fulfill(status=404, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-found"}]}, headers={"Access-Control-Allow-Origin": "*"})
        else:
            route.fulfill(status=200, json=body, headers={"Access-Control-Allow-Origin": "*",
                                                          "Content-Type": "application/fhir+json"})
    return handle


def _context(browser, fhir_base: str):
    """A fresh context (no localStorage carried over); loopback only, the FHIR base answered in place."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    fhir = _fhir(fhir_base)

    def route(r):
        url = r.request.url
        if url.startswith(fhir_base):
            fhir(r)
        elif url.startswith("http://127.0.0.1") or url.startswith("data:"):
            r.continue_()
        else:
            r.abort()
    context.route("**/*", route)
    return context


def _open(page, site: str, service: str, fhir_base: str, screen: str, hook: str) -> None:
    page.goto(f"{site}/index.html?fhirServiceUrl={quote(fhir_base, safe='')}&patientId=pat-42"
              f"&serviceDiscoveryURL={quote(service + '/cds-services', safe='')}&screen={screen}&hook={hook}")


METRICS_TOKEN = "m" * 40


def _metric(service: str, line_start: str) -> float:
    r = requests.get(f"{service}/metrics", timeout=10, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200, r.status_code
    return sum(float(l.rsplit(" ", 1)[1]) for l in r.text.splitlines() if l.startswith(line_start))


def _shots(tmp_path: Path) -> Path:
    return SCREENSHOTS if os.environ.get("CXR_UPDATE_SCREENSHOTS") == "1" else tmp_path


@pytest.mark.slow
def test_sandbox_renders_our_cards_and_its_feedback_reaches_our_store(sandbox_site, study_folder, tiny_model_dir,
                                                                      tmp_path):
    jwks = json.loads((SITE / ".well-known" / "jwks.json").read_text())
    port = free_port()
    service = f"http://127.0.0.1:{port}"
    fhir_base = f"http://127.0.0.1:{free_port()}/fhir"          # never bound: the browser harness answers it
    env = {"CXR_CDS_AUTH": "jwt", "CXR_CDS_PUBLIC_URL": service,
           "CXR_CDS_TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks": jwks}}),   # pinned, never the token's jku
           "CXR_CDS_CORS_ORIGINS": sandbox_site, "CXR_CDS_DICOM_FOLDER": str(study_folder),
           "CXR_CDS_MODEL": str(tiny_model_dir), "CXR_CDS_DEVICE": "cpu", "CXR_CDS_SCORES": "false",
           "CXR_CDS_DB": str(tmp_path / "cds.sqlite3"), "CXR_CDS_MAX_NEW_TOKENS": "12",
           "CXR_CDS_DEADLINE_S": "60", "CXR_CDS_LINK_SECRET": "l" * 40}
    if "CXR_CDS_METRICS_TOKEN" in settings_names():             # /metrics is not public with JWT on
        env["CXR_CDS_METRICS_TOKEN"] = METRICS_TOKEN
    sync_playwright = playwright_or_skip()
    with served(env, tmp_path, port=port), sync_playwright() as p:
        browser = launch(p)
        # -- patient-view: the latest radiograph's card, its review link, accept on the page, Dismiss ----------
        context = _context(browser, fhir_base)
        page = context.new_page()
        errors = watch_console(page)
        _open(page, sandbox_site, service, fhir_base, "patient-view", "patient-view")
        summary = page.locator("p", has_text="Latest chest X-ray 2026-11-28 (AI findings)").first
        summary.wait_for(timeout=90_000)
        card = page.locator(".decision-card, [class*='decision-card']", has=summary).first
        card.screenshot(path=str(_shots(tmp_path) / "card-sandbox-patient-view.png"))
        with context.expect_page() as opened:
            page.get_by_role("button", name="Review the AI draft: image, evidence, agree or correct").first.click()
        review = opened.value
        review.wait_for_load_state()
        assert review.url.startswith(f"{service}/review/")
        assert review.text_content("h1").startswith("AI draft: chest X-ray 2026-11-28")
        # the image the job read, stored with the analysis, drawn for the clinician
        review.wait_for_selector("#radiograph-canvas", state="visible")
        review.click("#accept")
        review.wait_for_selector("#status")
        assert review.text_content("#status").strip() == "Recorded: you accepted the draft."
        review.close()
        with page.expect_response(lambda r: r.url.endswith("/cxr-ai-patient-view/feedback")) as sent:
            card.get_by_role("button", name="Dismiss", exact=True).click()
        assert sent.value.status == 200 and sent.value.json() == {"received": 1, "stored": 1}
        assert json.loads(sent.value.request.post_data)["feedback"][0]["outcome"] == "overridden"
        context.close()
        # -- PAMA: a chest X-ray order (no accession number: the prior's card), dismissed with a reason ------
        context = _context(browser, fhir_base)
        page = context.new_page()
        errors += watch_console(page)
        _open(page, sandbox_site, service, fhir_base, "pama", "order-select")
        page.wait_for_function(FIND_STORE, timeout=30_000)
        select = f"{service}/cds-services/cxr-ai-order-select"
        page.wait_for_function(f"() => ({EXCHANGE})({json.dumps(select)}) !== null", timeout=60_000)
        assert json.loads(page.evaluate(EXCHANGE, select)) == {"cards": []}      # the empty order: no card
        page.evaluate("c => window.__sandboxStore.dispatch({type: 'UPDATED_STUDY', coding: c})", CXR)
        summary = page.locator("p", has_text="Prior chest X-ray 2026-11-28 (AI findings)").first
        summary.wait_for(timeout=90_000)
        card = page.locator(".decision-card, [class*='decision-card']", has=summary).first
        card.screenshot(path=str(_shots(tmp_path) / "card-sandbox-pama-order.png"))
        card.get_by_role("button", name="select dismiss reason").click()
        with page.expect_response(lambda r: r.url.endswith("/cxr-ai-order-select/feedback")) as sent:
            page.get_by_role("menuitem", name="Override: AI findings disagree with my reading of the image").click()
        assert sent.value.status == 200 and sent.value.json() == {"received": 1, "stored": 1}
        reason = json.loads(sent.value.request.post_data)["feedback"][0]["overrideReason"]["reason"]
        assert reason == {"code": "disagree", "system": "urn:cxr-cds:cds-hooks:override-reason"}
        context.close()
        browser.close()
        # our side: the feedback store got the accept (review page) and both overrides (sandbox)
        assert _metric(service, 'cxr_cds_feedback_total{') == 3
        assert _metric(service, 'cxr_cds_feedback_review_decisions_total{decision="accept"') == 1
    # the sandbox's own noise offline (its default discovery URL on the internet is aborted) is not ours
    ours = [e for e in errors if "127.0.0.1:" + str(port) in e]
    assert ours == [], ours
    log = (tmp_path / "serve.log").read_text()
    assert "401 on" not in log                                   # every sandbox JWT verified
