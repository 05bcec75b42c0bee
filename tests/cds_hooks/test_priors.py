"""Issue 14 through the service: compare with the prior study, at the level of coded findings.

A real Orthanc holds a patient's studies (current PA+LL; the prior AP+LL CR; a hand CR and a lateral-only
chest study between them; one older than a year). The model is the tiny real engine whose text is
replaced by a set report per image read (``ScriptedByImage``): the whole pipeline runs (QIDO-RS, WADO-RS,
decode, generation, findings, FHIR, job layer, cards).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
import time
from datetime import date

import pytest

from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import cxr_order, hook_request, patient
from tests.cds_hooks.review_links import review_page, review_path

pytestmark = pytest.mark.orthanc

SIGN = "/cds-services/cxr-ai-order-sign"
MRN, MRN_BAD = "MRNPRIOR01", "MRNPRIOR02"
CHANGE_SYSTEM = "https://cxr-cds.example.org/fhir/CodeSystem/cxr-ai-change"
PRIOR_REPORT = ("No pleural effusion. Mild cardiomegaly. Right lower lobe consolidation. Moderate pulmonary "
                "edema. Left upper lobe nodule. Left basilar atelectasis. No pneumothorax.")
CURRENT_REPORT = ("Small right pleural effusion. Moderate cardiomegaly. No consolidation. Mild pulmonary edema. "
                  "Left upper lobe nodule. Possible left basilar atelectasis. No pneumothorax.")


def _digest(pixels) -> str:
    return hashlib.sha256(pixels.tobytes() + repr(pixels.shape).encode()).hexdigest()


def _read(ds) -> str:
    """The digest of the (H, W) uint8 image the service reads from ``ds``, decoded independently."""
    from imaging import read_radiograph
    from tests.support.synthetic_cxr import to_bytes

    return _digest(read_radiograph(to_bytes(ds)).pixels)


class ScriptedByImage:
    """The tiny engine's generation with its text replaced by the report set for the image read.

    ``gate[digest]`` (an Event) holds that image's generation until set: a slow prior. ``revision``
    rewrites the model identity the result reports (another model version).
    """

    def __init__(self, engine, reports: dict[str, str], *, revision: str | None = None):
        self.engine, self.reports, self.revision = engine, reports, revision
        self.calls: collections.Counter = collections.Counter()
        self.gate: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __call__(self, request):
        key = _digest(request.image)
        with self._lock:
            self.calls[key] += 1
        if key in self.gate:
            self.gate[key].wait(30)
        if key not in self.reports:
            raise AssertionError(f"the service read an image no report was set for ({key[:12]})")
        result = self.engine.generate([request])[0]
        model = dict(result.model)
        if self.revision:
            model["revision"] = self.revision
        # a whole report: it ended, whatever the tiny model's own text did at the token cap
        return dataclasses.replace(result, text=self.reports[key], model=model, finish_reason="eos")


@pytest.fixture(scope="module")
def studies(orthanc):
    from tests.support import synthetic_cxr as s

    size = dict(rows=128, cols=112)
    made = {
        "current": s.make_study(("PA", "LL"), accession="ACCPRIOR1", patient_id=MRN,
                                study_date=date(2026, 11, 28), seed=21, **size),
        "prior": s.make_study(("LL", "AP"), accession="ACCPRIOR0", patient_id=MRN,
                              study_date=date(2026, 11, 20), modality="CR", seed=31, **size),
        "hand": [s.make_cxr(view="PA", patient_id=MRN, study_date=date(2026, 11, 25), modality="CR",
                            body_part="HAND", seed=41, **size)],
        "lateral": s.make_study(("LL",), patient_id=MRN, study_date=date(2026, 11, 24), seed=51, **size),
        "old": s.make_study(("PA",), patient_id=MRN, study_date=date(2025, 6, 1), seed=61, **size),
        # another patient whose prior cannot be decoded (corrupt RLE)
        "bad_current": s.make_study(("PA",), accession="ACCPRIOR2", patient_id=MRN_BAD,
                                    study_date=date(2026, 11, 28), seed=71, **size),
        "bad_prior": [s.make_corrupt_rle(view="PA", patient_id=MRN_BAD, study_date=date(2026, 11, 10), **size)],
    }
    made["hand"][0].StudyDescription = "XR HAND"
    orthanc.store(*[ds for group in made.values() for ds in group])
    return made


@pytest.fixture(scope="module")
def images(studies) -> dict[str, str]:
    """The digest of the frontal image of each readable study (the one the service must read)."""
    return {"current": _read(studies["current"][0]), "prior": _read(studies["prior"][1]),
            "old": _read(studies["old"][0]),
            "bad_current": _read(studies["bad_current"][0])}


@pytest.fixture
def make(tmp_path, engine, orthanc):
    """``make(generate, *, revision=None, db=None, **settings)`` -> app over Orthanc; closed after the test."""
    from cds_hooks.app import create_app
    from cds_hooks.runtime import Runtime, identity_dict
    from cds_hooks.settings import load_settings
    from cds_hooks.store import Store
    from imaging import DicomWebSource

    made = []

    def build(generate, *, revision=None, db=None, **overrides):
        values = {"auth": "none", "db": db or tmp_path / "priors.sqlite3", "max_new_tokens": 8,
                  "public_url": "https://cds.example.org", "deadline_s": 60, "scores": False}
        values.update(overrides)
        settings = load_settings(environ={}, **values)
        identity = identity_dict(engine.identity)
        if revision:
            identity["revision"] = revision
        runtime = Runtime(source=DicomWebSource.from_url(orthanc.dicomweb_url), generate=generate,
                          model_identity=identity, store=Store(settings.db))
        app = create_app(settings, runtime=runtime)
        made.append(app)
        return app

    yield build
    for app in made:
        app.extensions["cxr_cds"].close()


def _sign(accession: str, mrn: str = MRN) -> dict:
    return hook_request("order-sign", "pat-prior", [cxr_order("sr-prior", "pat-prior", accession=accession)],
                        prefetch={"patient": patient("pat-prior", mrn)})


def _card(client, accession="ACCPRIOR1", mrn=MRN) -> dict:
    r = client.post(SIGN, json=_sign(accession, mrn))
    assert r.status_code == 200
    (card,) = check_response(r.get_json())
    return card


def _status(client, uid: str, want=("done", "failed"), timeout_s=60.0) -> dict:
    end = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < end:
        r = client.get(f"/studies/{uid}")
        status = r.get_json() if r.status_code == 200 else None
        if status and status.get("status") in want:
            return status
        time.sleep(0.1)
    raise AssertionError(f"study {uid} did not reach {want}: {status}")


def _report(card) -> dict:
    return card["suggestions"][0]["actions"][0]["resource"]


def _observation(report, name) -> dict:
    return next(r for r in report["contained"] if r.get("id") == "obs-" + name.replace("_", "-"))


def _change(observation) -> str:
    (code,) = [c["valueCodeableConcept"]["coding"][0]["code"] for c in observation["component"]
               if c["code"]["coding"][0]["code"] == "change-since-prior"]
    return code


def _scripted(images) -> dict[str, str]:
    return {images["current"]: CURRENT_REPORT, images["prior"]: PRIOR_REPORT}


def test_change_since_the_prior_on_the_card_in_the_draft_and_on_the_review_page(make, engine, studies, images,
                                                                                   assert_valid_r4):
    generate = ScriptedByImage(engine, _scripted(images))
    app = make(generate, critical_findings=("pneumothorax", "pleural_effusion"))
    client = app.test_client()

    card = _card(client)

    # the right prior was read: the 2026-11-20 study's AP image; not the hand CR, the lateral-only study,
    # or the study older than a year
    assert generate.calls[images["prior"]] == 1 and generate.calls[images["current"]] == 1
    assert sum(generate.calls.values()) == 2             # no other image was read (hand, lateral, old)
    detail = card["detail"]
    line = next(x for x in detail.split("\n\n") if x.startswith("**Change since"))
    assert line.startswith("**Change since 2026-11-20** (two AI drafts compared, not the images): "
                           "new small right pleural effusion; worse cardiomegaly (moderate now, mild before); "
                           "resolved right consolidation; better edema (mild now, moderate before); "
                           "unchanged left nodule or mass; not comparable atelectasis (uncertain in the current "
                           "report)."), line
    assert "- Pleural effusion (new): now “Small right pleural effusion.”; before “No pleural effusion.”" in detail
    assert card["indicator"] == "critical"            # a new critical finding (pleural effusion here)

    report = _report(card)
    assert_valid_r4(report)
    assert {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid",
                                                   "value": f"urn:oid:{studies['prior'][0].StudyInstanceUID}"},
            "display": f"Prior study {studies['prior'][0].StudyInstanceUID} of 2026-11-20 (compared)"} \
        in report["imagingStudy"]
    assert ("Comparison with the prior study of 2026-11-20 (two AI drafts compared, not the images): "
            "new: pleural effusion (right, small); worse: cardiomegaly (moderate now, mild before)") \
        in report["conclusion"]
    assert report["conclusion"].splitlines()[-1].startswith("Read from one image")
    changes = {name: _change(_observation(report, name)) for name in
               ("pleural_effusion", "cardiomegaly", "consolidation", "edema", "nodule_or_mass", "atelectasis",
                "pneumothorax")}
    assert changes == {"pleural_effusion": "new", "cardiomegaly": "worse", "consolidation": "resolved",
                       "edema": "better", "nodule_or_mass": "unchanged", "atelectasis": "not-comparable",
                       "pneumothorax": "unchanged"}
    assert _observation(report, "cardiomegaly")["interpretation"][0]["coding"][0]["code"] == "W"
    assert _observation(report, "edema")["interpretation"][0]["coding"][0]["code"] == "B"
    assert any("prior study's AI report of 2026-11-20: \"Mild cardiomegaly.\"" in n["text"]
               for n in _observation(report, "cardiomegaly")["note"])

    # the review page: both images side by side, and the changes with each report's phrase
    page = review_page(client, card)
    assert 'id="current-figure"' in page and 'id="prior-figure"' in page and "no-prior-image" not in page
    assert "Two AI drafts compared, finding by finding, not the images." in page
    assert 'id="change-pleural_effusion"' in page and "No pleural effusion." in page
    path, query = review_path(card).split("?", 1)
    png = client.get(f"{path}/prior.png?{query}")
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert png.data != client.get(f"{path}/image.png?{query}").data          # the prior's rendition, not ours
    assert client.get(f"{path}/prior.png?token=forged").status_code == 403

    # the next call: both analyses stored, no model run
    again = _card(client)
    assert sum(generate.calls.values()) == 2
    assert next(x for x in again["detail"].split("\n\n") if x.startswith("**Change since")) == line


def test_a_prior_drafted_by_another_model_version_is_drafted_again_not_compared(make, engine, tmp_path, studies,
                                                                               images):
    db = tmp_path / "versions.sqlite3"
    old = ScriptedByImage(engine, _scripted(images), revision="rev-old")
    first = make(old, revision="rev-old", db=db)
    client = first.test_client()
    assert client.post(f"/studies/{studies['prior'][0].StudyInstanceUID}/analyze").status_code == 202
    _status(client, studies["prior"][0].StudyInstanceUID)
    assert old.calls[images["prior"]] == 1

    new = ScriptedByImage(engine, _scripted(images), revision="rev-new")
    card = _card(make(new, revision="rev-new", db=db).test_client())
    assert new.calls[images["prior"]] == 1                 # the stored rev-old draft of the prior was not used
    assert "**Change since 2026-11-20**" in card["detail"]

    # the same version on the same store: the stored prior draft is compared, the model is not run
    same = ScriptedByImage(engine, _scripted(images), revision="rev-new")
    card = _card(make(same, revision="rev-new", db=db).test_client())
    assert sum(same.calls.values()) == 0 and "**Change since 2026-11-20**" in card["detail"]


def test_no_prior_within_the_window_is_said_in_one_line(make, engine, studies, images, assert_valid_r4):
    generate = ScriptedByImage(engine, _scripted(images))
    client = make(generate).test_client()
    card = _card(client, accession="ACCPRIOR0")           # the prior itself: its own prior is 17 months older
    assert "No earlier chest radiograph within 365 days to compare with." in card["detail"].split("\n\n")
    assert "Change since" not in card["detail"] and generate.calls[images["old"]] == 0
    report = _report(card)
    assert_valid_r4(report)
    assert "Comparison: none (no earlier chest radiograph within 365 days)." in report["conclusion"].splitlines()
    assert len(report["imagingStudy"]) == 1


def test_an_unreadable_prior_is_said_in_one_line_and_the_draft_stands(make, engine, studies, images,
                                                                      assert_valid_r4):
    generate = ScriptedByImage(engine, {images["bad_current"]: CURRENT_REPORT})
    card = _card(make(generate).test_client(), accession="ACCPRIOR2", mrn=MRN_BAD)
    assert card["summary"].startswith("AI draft")
    (line,) = [x for x in card["detail"].split("\n\n") if "prior" in x.lower()]
    assert line.startswith("No comparison: the prior chest radiograph of 2026-11-10 could not be read by the AI ("), line
    report = _report(card)
    assert_valid_r4(report)
    assert any(x.startswith("Comparison: not made: the prior study of 2026-11-10 could not be read by the AI")
               for x in report["conclusion"].splitlines())


def test_a_prior_not_yet_analysed_is_pending_within_the_deadline_and_the_next_call_compares(make, engine, studies,
                                                                                           images):
    generate = ScriptedByImage(engine, _scripted(images))
    generate.gate[images["prior"]] = threading.Event()       # the prior's analysis is slow
    app = make(generate, deadline_s=3)
    client = app.test_client()
    current_uid, prior_uid = studies["current"][0].StudyInstanceUID, studies["prior"][0].StudyInstanceUID
    try:
        # study arrival: the current study's analysis, and its prior's queued behind it (warmed, not waited for)
        assert client.post(f"/studies/{current_uid}/analyze").status_code == 202
        _status(client, current_uid)
        assert _status(client, prior_uid, want=("queued", "running"))["status"] in ("queued", "running")

        started = time.monotonic()
        card = _card(client)
        elapsed = time.monotonic() - started
        assert elapsed < 3 + 1.5, elapsed                                   # answered at the deadline
        assert card["summary"].startswith("AI draft")
        (line,) = [x for x in card["detail"].split("\n\n") if "prior" in x]
        assert line.startswith("Comparison with the prior of 2026-11-20 pending"), line
        assert "Comparison: not made: the prior study of 2026-11-20 had no AI draft yet" in _report(card)["conclusion"]
    finally:
        generate.gate[images["prior"]].set()
    _status(client, prior_uid, want=("done",))
    card = _card(client)
    assert "**Change since 2026-11-20** (two AI drafts compared, not the images): new small right pleural effusion" \
        in card["detail"]
    assert generate.calls[images["prior"]] == 1 and generate.calls[images["current"]] == 1
    assert json.dumps(card).count("Comparison with the prior of") == 0
