"""Per-finding yes/no scores through the whole service (issue 7 item 1; issue 3 item 4).

Settings -> ``build_runtime`` (scores through the inference worker) -> analysis -> stored draft ->
review page (labelled as model probabilities) -> DiagnosticReport Observation components (R4-valid).
"""
from __future__ import annotations

import dataclasses
import re
import time

import pytest

from cds_hooks import cards
from cds_hooks.errors import SettingsError
from cds_hooks.pipeline import Analysis
from cds_hooks.settings import load_settings
from prompts import ClinicalContext, finding_questions
from prompts.findings import PRIMARY_FINDINGS
from tests.cds_hooks.checks import check_response
from tests.cds_hooks.conftest import ORDERED_UID, CountingGenerate, cxr_order, hook_request, patient
from tests.cds_hooks.review_links import draft_json, link_target, review_page

SIGN = "/cds-services/cxr-ai-order-sign"
PUBLIC = "https://cds.example.org"
YES_PROBABILITY = "yes-probability"
SCRIPTED_REPORT = "Small left pleural effusion. No pneumothorax. Heart size is normal."


def _sign_42():
    return hook_request("order-sign", "pat-42", [cxr_order("sr-1", "pat-42", accession="ACC0042")],
                        prefetch={"patient": patient("pat-42", "MRN0042")})


def _drain(app, timeout_s=60):
    analyzer = app.extensions["cxr_cds"].analyzer
    end = time.monotonic() + timeout_s
    while analyzer.in_flight and time.monotonic() < end:
        time.sleep(0.05)
    assert analyzer.in_flight == 0


def _draft(client, card) -> dict:
    return draft_json(client, card)


def _page_scores(page: str) -> dict[str, str]:
    """Finding -> the probability the review page shows ("0.42" or "not scored")."""
    return dict(re.findall(r'id="finding-(\w+)".*?class="probability">([^<]+)<', page, flags=re.DOTALL))


def _pixels(study_folder, sop_instance_uid):
    """The (H, W) uint8 image the service read, decoded independently from the file."""
    from imaging import read_radiograph

    return read_radiograph(study_folder / f"{sop_instance_uid}.dcm").pixels


class ScriptedReport:
    """The real tiny-model generation with its (random-weight) text replaced by a fixed report.

    The tiny model's text names no finding, so no Observation would be written; the scores still
    come from the real model through the real worker.
    """

    def __init__(self, generate):
        self.generate = generate

    def __call__(self, request):
        return dataclasses.replace(self.generate(request), text=SCRIPTED_REPORT)


@pytest.fixture
def worker(engine):
    from model_runtime import InferenceWorker

    with InferenceWorker(engine) as w:
        yield w


@pytest.fixture
def make_scored_app(tmp_path, engine, study_folder):
    """``make(generate, score, db=None)`` -> app over the tiny engine and the folder of studies."""
    from cds_hooks.app import create_app
    from cds_hooks.runtime import Runtime, identity_dict
    from cds_hooks.store import Store
    from imaging import FolderSource

    made = []

    def make(generate, score, *, db=None, **overrides):
        settings = load_settings(environ={}, auth="none", db=db or tmp_path / f"s-{len(made)}.sqlite3",
                                 max_new_tokens=12, public_url=PUBLIC, deadline_s=60, **overrides)
        runtime = Runtime(source=FolderSource(study_folder), generate=generate,
                          model_identity=identity_dict(engine.identity), store=Store(settings.db), score=score)
        app = create_app(settings, runtime=runtime)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["cxr_cds"].close()


@pytest.fixture(scope="module")
def served(tiny_model_dir, study_folder, tmp_path_factory):
    """The app as `cxr-cds serve` builds it: settings -> build_runtime (model, worker, scores on by default)."""
    from cds_hooks.app import create_app

    settings = load_settings(environ={}, auth="none", model=str(tiny_model_dir), device="cpu",
                             dicom_folder=study_folder, max_new_tokens=12, public_url=PUBLIC, deadline_s=60,
                             db=tmp_path_factory.mktemp("served") / "cds.sqlite3")
    app = create_app(settings)
    yield app
    app.extensions["cxr_cds"].close()


# -- settings -------------------------------------------------------------------------------------------
def test_scores_setting_defaults_to_on_and_parses():
    assert load_settings(environ={}, auth="none").scores is True
    assert load_settings(environ={"CXR_CDS_SCORES": "false"}, auth="none").scores is False
    assert load_settings(environ={"CXR_CDS_SCORES": "1"}, auth="none").scores is True


def test_bad_scores_setting_names_the_variable():
    with pytest.raises(SettingsError, match=r"CXR_CDS_SCORES='maybe' is not valid: must be true/false .*"
                                            r"expected true or false \(per-finding yes/no probabilities"):
        load_settings(environ={"CXR_CDS_SCORES": "maybe"}, auth="none")


# -- settings -> build_runtime -> worker -> stored analysis -> card -------------------------------------
def test_service_built_from_settings_scores_every_primary_finding(served, engine, study_folder):
    from model_runtime import InferenceWorker

    client = served.test_client()
    runtime = served.extensions["cxr_cds"].runtime
    assert isinstance(runtime.score.__self__, InferenceWorker)                   # scoring goes through the worker
    # study arrival: the context-free analysis, then the hook reuses it
    assert client.post(f"/studies/{ORDERED_UID}/analyze").status_code == 202
    _drain(served)
    (card,) = check_response(client.post(SIGN, json=_sign_42()).get_json())
    draft = _draft(client, card)
    scores = draft["scores"]
    assert list(scores) == list(PRIMARY_FINDINGS)
    # equal to the engine called directly on the same pixels and the same six questions
    questions = finding_questions(ClinicalContext())
    direct = engine.score_yes_no(_pixels(study_folder, draft["study"]["sop_instance_uid"]), list(questions.values()))
    assert scores == {name: round(p, 4) for name, p in zip(questions, direct)}
    # the review page lists each primary finding with its probability, labelled as uncalibrated model
    # output; the card stays short (issue 13): no probabilities in its detail
    page = review_page(client, card)
    assert "not a risk of disease" in page and "P(yes)" not in card["detail"]
    assert _page_scores(page) == {n: f"{scores[n]:.2f}" for n in PRIMARY_FINDINGS}
    # the summary is untouched by scores
    analysis = Analysis.from_json(draft)
    cfg = cards.CardSettings(base_url=PUBLIC, source_label="x", source_url=PUBLIC)
    without = cards.draft_card(dataclasses.replace(analysis, scores=None), cfg, patient_id="pat-42")
    assert card["summary"] == without["summary"] and len(card["summary"]) <= cards.SUMMARY_MAX


def test_scores_off_builds_no_scorer(tiny_model_dir, study_folder, tmp_path):
    from cds_hooks.runtime import build_runtime

    settings = load_settings(environ={"CXR_CDS_SCORES": "off"}, auth="none", model=str(tiny_model_dir),
                             device="cpu", dicom_folder=study_folder, db=tmp_path / "off.sqlite3")
    runtime = build_runtime(settings)
    try:
        assert runtime.score is None and runtime.generate is not None
    finally:
        runtime.close()


def test_without_a_scorer_cards_and_drafts_carry_no_scores(make_app):
    app = make_app(deadline_s=60)                                # runtime.score is None
    client = app.test_client()
    (card,) = check_response(client.post(SIGN, json=_sign_42()).get_json())
    assert "P(yes)" not in card["detail"]
    assert set(_page_scores(review_page(client, card)).values()) <= {"not scored"}
    assert _draft(client, card)["scores"] is None
    report = card["suggestions"][0]["actions"][0]["resource"]
    assert YES_PROBABILITY not in str(report)


# -- the DiagnosticReport draft in the card carries the scores ------------------------------------------
def test_draft_report_carries_scores_as_observation_components(make_scored_app, engine, worker, study_folder,
                                                               assert_valid_r4):
    app = make_scored_app(ScriptedReport(worker.run), worker.score)
    client = app.test_client()
    (card,) = check_response(client.post(SIGN, json=_sign_42()).get_json())
    draft = _draft(client, card)
    scores = draft["scores"]
    report = card["suggestions"][0]["actions"][0]["resource"]
    assert_valid_r4(report)
    components = {}
    for obs in report["contained"]:
        if obs["resourceType"] != "Observation":
            continue
        (score,) = [c for c in obs.get("component", [])
                    if any(cd["code"] == YES_PROBABILITY for cd in c["code"]["coding"])]
        components[obs["id"]] = score["valueQuantity"]
    # one Observation per primary finding (named in the report, or only scored), each with P(yes)
    primary = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion", "pneumothorax")
    assert set(components) == {"obs-" + n.replace("_", "-") for n in primary}
    unmentioned = {o["id"] for o in report["contained"] if "dataAbsentReason" in o}
    assert unmentioned == {"obs-atelectasis", "obs-consolidation", "obs-edema"}
    assert report["contained"][0]["version"][-1] == {"type": {"text": "scores prompt"},
                                                     "value": "finding_question.v1"}
    for name in primary:
        q = components["obs-" + name.replace("_", "-")]
        assert q == {"value": scores[name], "unit": "probability", "system": "http://unitsofmeasure.org", "code": "1"}
    # the card detail says what the report said and what the model's yes/no answer was
    page = review_page(client, card)
    shown = _page_scores(page)
    assert shown["pneumothorax"] == f"{scores['pneumothorax']:.2f}" and shown["edema"] == f"{scores['edema']:.2f}"
    assert shown["pleural_effusion"] == f"{scores['pleural_effusion']:.2f}"
    assert re.search(r'id="finding-edema".*?class="presence">not mentioned<', page, flags=re.DOTALL)
    assert re.search(r'id="finding-pneumothorax".*?class="presence">absent<', page, flags=re.DOTALL)
    assert card["summary"] == "AI draft, chest X-ray 2026-11-28: small left pleural effusion"
    assert all(0.0 <= scores[n] <= 1.0 for n in PRIMARY_FINDINGS)


def test_prior_card_leaves_the_scores_to_the_review_page(make_scored_app, worker):
    app = make_scored_app(ScriptedReport(worker.run), worker.score)
    client = app.test_client()
    (card,) = check_response(client.post(SIGN, json=_sign_42()).get_json())
    analysis = Analysis.from_json(_draft(client, card))
    cfg = cards.CardSettings(base_url=PUBLIC, source_label="x", source_url=PUBLIC)
    prior = cards.prior_card(analysis, cfg)
    assert "P(yes)" not in prior["detail"] and "- **Pleural effusion**: present, small, left" in prior["detail"]
    assert "\n\n\n" not in prior["detail"]


def test_analysis_key_is_the_same_with_scores_on_or_off(make_scored_app, engine, worker, tmp_path):
    """Decision: scores belong to the stored analysis, not to its key; turning them on recomputes nothing."""
    db = tmp_path / "shared.sqlite3"
    off = make_scored_app(CountingGenerate(engine), None, db=db)
    (first,) = check_response(off.test_client().post(SIGN, json=_sign_42()).get_json())
    assert set(_page_scores(review_page(off.test_client(), first)).values()) == {"not scored"}
    generate = CountingGenerate(engine)
    on = make_scored_app(generate, worker.score, db=db)
    (again,) = check_response(on.test_client().post(SIGN, json=_sign_42()).get_json())
    assert generate.calls == 0 and link_target(again) == link_target(first)   # the stored analysis, as stored
    assert set(_page_scores(review_page(on.test_client(), again)).values()) == {"not scored"}


def test_a_scoring_failure_fails_the_analysis_with_a_notice(make_scored_app, engine):
    from model_runtime import OutOfMemory

    def score(image, prompts):
        raise OutOfMemory("out of device memory scoring 1 yes/no question on one image; "
                          "use 4bit quantization or a larger device")

    app = make_scored_app(CountingGenerate(engine), score)
    (card,) = check_response(app.test_client().post(SIGN, json=_sign_42()).get_json())
    assert card["summary"] == "No AI draft: the analysis failed (out_of_memory)"
    assert "suggestions" not in card and app.extensions["cxr_cds"].runtime.store.count_analyses() == 0
