"""The clinician's review page (issue 13) in headless Debian Chromium, and its links, through HTTP.

The service runs on loopback (the real app over the tiny model, with a scripted report text so the
findings are known); a recording FHIR endpoint on loopback receives the write-back. The browser
shows the image, the highlighted evidence and the findings, a clinician reviews with the keyboard
and the mouse, and the verdicts, the decision, the CDS feedback, the metrics and the FHIR write
are checked on the server side. axe-core checks accessibility.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import time

import pytest
from werkzeug.wrappers import Request, Response

from cds_hooks.rendition import render_rendition
from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import CountingGenerate, cxr_order, hook_request, patient
from tests.cds_hooks.review_links import review_path
from tests.cds_hooks.serving import free_port
from tests.support.browser import (SCREENSHOTS, WsgiServer, launch, offline, playwright_or_skip, serious_violations,
                                   watch_console)

SIGN = "/cds-services/cxr-ai-order-sign"
REPORT = ("Small left pleural effusion. Cannot exclude a small right apical pneumothorax. "
          "Heart size is normal.")


class ScriptedReport(CountingGenerate):
    """The real tiny-model generation with its random text replaced by ``REPORT`` (known findings)."""

    def __call__(self, request):
        return dataclasses.replace(super().__call__(request), text=REPORT)


class RecordingFhir:
    """A FHIR endpoint on loopback that answers a transaction with 200 and keeps each JSON body."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.server = WsgiServer(self._wsgi)
        self.base = f"{self.server.url}/fhir"

    @Request.application
    def _wsgi(self, request: Request) -> Response:
        if request.method == "POST" and request.path == "/fhir":
            self.bodies.append(json.loads(request.get_data()))
            return Response(json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": [
                {"response": {"status": "201 Created"}}] * 3}), status=200, mimetype="application/fhir+json")
        return Response("{}", status=404, mimetype="application/fhir+json")


@pytest.fixture
def fhir():
    server = RecordingFhir()
    yield server
    server.server.close()


@pytest.fixture
def service(make_app, engine, fhir, study_folder):
    """The app served on loopback with write-back on; ``(base URL, app)``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = make_app(generate=ScriptedReport(engine), public_url=base, deadline_s=60, write_back="fhir",
                   fhir_allowlist=(fhir.base,), link_secret="s" * 40)
    server = WsgiServer(app, port)
    yield base, app
    server.close()


def _draft_card(app, fhir_base: str) -> dict:
    body = hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        prefetch={"patient": patient("pat-42", "MRN0042")}, fhirServer=fhir_base)
    body["context"]["encounterId"] = "enc-9"
    (card,) = check_response(app.test_client().post(SIGN, json=body).get_json())
    return card


def _store_rendition(app, study_folder, card) -> tuple[str, bytes]:
    """What the analysis job does once the lead wires it: store the 8-bit image it read as a PNG."""
    from imaging import read_radiograph

    analysis_id = review_path(card).split("?")[0].rsplit("/", 1)[1]
    body = app.extensions["cxr_cds"].runtime.store.get_by_id(analysis_id)
    pixels = read_radiograph(study_folder / f"{body['study']['sop_instance_uid']}.dcm").pixels   # (H, W) uint8
    png = render_rendition(pixels)
    app.extensions["cxr_cds_review"].store.put_rendition(analysis_id, png)
    return analysis_id, png


def _shots(tmp_path):
    """Screenshots go to docs/screenshots with CXR_UPDATE_SCREENSHOTS=1, else to the test's tmp dir."""
    return SCREENSHOTS if os.environ.get("CXR_UPDATE_SCREENSHOTS") == "1" else tmp_path


def test_review_page_in_chromium_records_verdicts_and_writes_back(service, fhir, study_folder, tmp_path):
    base, app = service
    card = _draft_card(app, fhir.base)
    assert card["indicator"] == "critical"                     # the uncertain pneumothorax
    analysis_id, png = _store_rendition(app, study_folder, card)
    review = app.extensions["cxr_cds_review"].store
    store = app.extensions["cxr_cds"].runtime.store
    url = card["links"][0]["url"]
    assert url.startswith(f"{base}/review/{analysis_id}?token=")
    sync_playwright = playwright_or_skip()
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        offline(context)
        page = context.new_page()
        errors = watch_console(page)
        page.goto(url)
        # the radiograph: the rendition drawn on the canvas, with non-black pixels
        page.wait_for_selector("#radiograph-canvas", state="visible")
        from PIL import Image
        import io
        width, height = Image.open(io.BytesIO(png)).size
        pixel_sum = "() => { const c = document.getElementById('radiograph-canvas'); " \
                    "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let s = 0; " \
                    "for (let i = 0; i < d.length; i += 4) s += d[i]; return [c.width, c.height, s]; }"
        w, h, before = page.evaluate(pixel_sum)
        assert (w, h) == (width, height) and before > 0
        # window/level from the keyboard: the narrowest window changes what is drawn
        page.focus("#window-width")
        page.keyboard.press("Home")
        assert page.input_value("#window-width") == "1" and page.evaluate(pixel_sum)[2] != before
        page.focus("#zoom")
        page.keyboard.press("End")
        assert page.text_content("#zoom-value") == "4×"
        page.click("#viewer-reset")
        # the evidence of each finding is highlighted in the report text
        marks = {m.get_attribute("id"): (m.get_attribute("class"), m.inner_text())
                 for m in page.locator("mark.evidence").all()}
        assert marks["ev-pleural-effusion"][0] == "evidence evidence-present"
        assert marks["ev-pleural-effusion"][1].endswith("Small left pleural effusion.")
        assert marks["ev-pneumothorax"][0] == "evidence evidence-uncertain"
        assert marks["ev-pneumothorax"][1].endswith("Cannot exclude a small right apical pneumothorax.")
        pneumothorax = page.locator("#finding-pneumothorax")
        assert "uncertain" in pneumothorax.inner_text() and "right" in pneumothorax.inner_text()
        assert "report_context version v1" in page.text_content("#prompt-version")
        assert page.locator("#ai-notice").is_visible()
        assert serious_violations(page) == []
        page.screenshot(path=str(_shots(tmp_path) / "review-page.png"), full_page=True)
        # review: agree (keyboard) on the effusion, disagree (mouse) on the pneumothorax, correct the text
        page.focus("input[name='verdict.pleural_effusion'][value='agree']")
        page.keyboard.press("Space")
        page.check("input[name='verdict.pneumothorax'][value='disagree']")
        page.fill("#report-text", "Small left pleural effusion. No pneumothorax.")
        page.click("#accept")
        page.wait_for_selector("#status")
        assert page.text_content("#status").strip() == ("Recorded: you accepted the draft; the preliminary report "
                                                         "was written to the EHR.")
        assert page.is_checked("input[name='verdict.pneumothorax'][value='disagree']")   # shown as stored
        assert serious_violations(page) == []
        # 200% zoom: the page reflows (no horizontal scrolling of the whole page)
        context200 = browser.new_context(viewport={"width": 640, "height": 450}, device_scale_factor=2)
        offline(context200)
        zoomed = context200.new_page()
        errors += watch_console(zoomed)
        zoomed.goto(url)
        assert zoomed.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        browser.close()
    assert errors == []
    # stored per finding, as a decision, and as CDS feedback on the card
    assert review.verdicts(analysis_id) == {"pleural_effusion": "agree", "pneumothorax": "disagree"}
    decision = review.decision(analysis_id)
    assert (decision.decision, decision.edited, decision.write_back) == ("accept", True, "written")
    assert decision.report_text == "Small left pleural effusion. No pneumothorax."
    assert store.count_feedback() == 1
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert ('cxr_cds_feedback_review_verdicts_total{finding="pneumothorax",presence="uncertain",verdict="disagree"} 1.0'
            in metrics)
    assert 'cxr_cds_feedback_total{finding="pneumothorax",outcome="accepted"} 1.0' in metrics
    assert 'cxr_cds_write_back_total{outcome="written"} 1.0' in metrics
    # the write-back: a transaction of the preliminary, AI-labelled report with the edits and the clinician
    (bundle,) = fhir.bodies
    assert bundle["type"] == "transaction"
    report, device, provenance = (e["resource"] for e in bundle["entry"])
    assert report["status"] == "preliminary" and report["meta"]["security"][0]["code"] == "AIAST"
    assert report["subject"] == {"reference": "Patient/pat-42"} and report["encounter"] == {"reference": "Encounter/enc-9"}
    text = base64.b64decode(report["presentedForm"][0]["data"]).decode()
    assert text.startswith("AI-generated draft for clinician review") and text.endswith("No pneumothorax.\n")
    (obs,) = [o for o in report["contained"] if o.get("id") == "obs-pneumothorax"]
    assert obs["note"][0]["authorReference"] == {"reference": "Practitioner/dr-1"}
    assert device["resourceType"] == "Device"
    assert provenance["target"] == [{"reference": bundle["entry"][0]["fullUrl"]}]
    whos = [a["who"]["reference"] for a in provenance["agent"]]
    assert whos == [bundle["entry"][1]["fullUrl"], "Practitioner/dr-1"]


def test_reject_needs_a_reason_and_is_stored_as_an_override(service, fhir):
    base, app = service
    card = _draft_card(app, fhir.base)
    client = app.test_client()
    path, token = review_path(card).split("?token=")
    r = client.post(path, data={"token": token, "decision": "reject"})
    assert r.status_code == 422 and "Choose a reason to reject the draft." in r.get_data(as_text=True)
    r = client.post(path, data={"token": token, "decision": "reject", "reason": "wrong-study"})
    assert r.status_code == 200 and "Recorded: you rejected the draft" in r.get_data(as_text=True)
    assert fhir.bodies == []                                              # nothing written on a rejection
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'cxr_cds_feedback_review_decisions_total{decision="reject",reason="wrong-study"} 1.0' in metrics
    assert 'cxr_cds_feedback_total{finding="pneumothorax",outcome="overridden"} 1.0' in metrics
    # the token must come in the form: the URL's alone does not do (no cookie, no forged post)
    r = client.post(f"{path}?token={token}", data={"decision": "accept"})
    assert r.status_code == 403 and app.extensions["cxr_cds_review"].store.count_decisions() == 1
    # unknown fields are refused with a message, nothing is stored
    r = client.post(path, data={"token": token, "verdict.not_a_finding": "agree"})
    assert r.status_code == 422 and "unknown finding or verdict" in r.get_data(as_text=True)


def test_tampered_foreign_and_missing_links_are_refused(service, fhir):
    base, app = service
    card = _draft_card(app, fhir.base)
    client = app.test_client()
    path, token = review_path(card).split("?token=")
    assert client.get(f"{path}?token={token}").status_code == 200
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad, status, says in ((f"{path}?token={tampered}", 403, "This review link is not valid"),
                              (f"/review/another-draft?token={token}", 403, "belongs to another draft"),
                              (path, 403, "carries no review token"),
                              (f"{path}/image.png?token={tampered}", 403, "not valid")):
        r = client.get(bad)
        assert r.status_code == status and says in r.get_data(as_text=True), bad
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert r.headers["Referrer-Policy"] == "no-referrer"
    # the stored draft JSON: the link's token, else a credential; never open
    drafts = path.replace("/review/", "/drafts/")
    assert client.get(drafts).status_code == 401
    assert client.get(f"{drafts}?token={tampered}").status_code == 401
    assert client.get(f"{drafts}?token={token}").get_json()["study"]["accession_number"] == "ACC0042"
    # the job stored a rendition of the image it read (a PNG)
    image = client.get(f"{path}/image.png?token={token}")
    assert image.status_code == 200 and image.get_data()[:8] == b"\x89PNG\r\n\x1a\n"
    # no rendition stored (e.g. written before renditions existed): the page says so (and the image URL is 404)
    app.extensions["cxr_cds"].runtime.store.execute("DELETE FROM review_renditions")
    page = client.get(f"{path}?token={token}").get_data(as_text=True)
    assert "No rendition of the radiograph was stored" in page
    assert client.get(f"{path}/image.png?token={token}").status_code == 404


def test_expired_link_is_refused_in_the_browser(make_app, engine, fhir, tmp_path):
    port = free_port()
    app = make_app(generate=ScriptedReport(engine), public_url=f"http://127.0.0.1:{port}", deadline_s=60,
                   link_ttl_s=1)
    server = WsgiServer(app, port)
    try:
        card = _draft_card(app, fhir.base)
        time.sleep(2.2)                                                    # past the 1 s lifetime
        sync_playwright = playwright_or_skip()
        with sync_playwright() as p:
            browser = launch(p)
            context = browser.new_context()
            offline(context)
            page = context.new_page()
            errors = watch_console(page)
            response = page.goto(card["links"][0]["url"])
            assert response.status == 410
            assert page.text_content("h1") == "This review link has expired"
            assert "open the chart or the order again" in page.text_content("#refusal")
            assert serious_violations(page) == []
            browser.close()
        # the only console line is the browser's own report of the 410 status, nothing from the page
        assert all("status of 410" in e for e in errors), errors
    finally:
        server.close()


def test_render_rendition_downscales_and_refuses_bad_input():
    import io

    import numpy as np
    from PIL import Image

    pixels = np.tile(np.arange(256, dtype=np.uint8), (3000, 8))            # (3000, 2048) uint8
    image = Image.open(io.BytesIO(render_rendition(pixels)))
    assert image.format == "PNG" and image.mode == "L" and image.size == (699, 1024)    # (W, H): long edge 1024
    small = Image.open(io.BytesIO(render_rendition(pixels[:100, :80], max_edge=1024)))
    assert small.size == (80, 100) and np.array_equal(np.asarray(small), pixels[:100, :80])
    with pytest.raises(ValueError, match=r"needs \(H, W\) uint8 pixels, got shape \(4, 4, 3\) dtype uint8"):
        render_rendition(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype float32"):
        render_rendition(np.zeros((4, 4), np.float32))
