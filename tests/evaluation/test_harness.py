"""The whole harness with the scripted stand-in model: metrics by hand, repeats, resume, outputs.

Truth (manifest.csv) and what the scripted reports say (labeler), for the six readable cases:

    case  effusion   pneumothorax  cardiomegaly | report says: effusion  pneumothorax  cardiomegaly
    c1    present    absent        present      |              present   absent        present
    c2    present    uncertain     absent       |              present   uncertain     -
    c3    absent     present       absent       |              absent    present       -
    c4    absent     absent        (blank)      |              present   absent        -
    c5    uncertain  absent        absent       |              absent    absent        -
    c6    absent     absent        present      |              -         -             -  ("no acute ...")

atelectasis, consolidation, edema: absent everywhere, never mentioned. c7 (missing file), c8 (not an
image) are unreadable; row 9 has an invalid label.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
from types import SimpleNamespace

import pytest

from evaluation import PlanError, evaluate, make_plan
from evaluation.plan import PRESETS, Plan, generation_seed
from tests.evaluation.conftest import REPORTS, ScriptedReader

MACRO_F1 = (0.8 + 1.0 + 2 / 3) / 3          # effusion 0.8, pneumothorax 1, cardiomegaly 2/3


def _run(data_dir, out, reader, plan, **kw):
    return evaluate(data_dir / "manifest.csv", reader, plan, out, progress=io.StringIO(), **kw)


def _runs(results):
    return {(r["prompt"], r["temperature"], r["top_p"]): r for r in results["runs"]}


@pytest.fixture(scope="module")
def main_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    reader = ScriptedReader()
    plan = make_plan(prompts=["report.v1", "finding_question.v1"], bootstrap=200)
    progress = io.StringIO()
    results = evaluate(data_dir / "manifest.csv", reader, plan, out, batch_size=4, progress=progress)
    return results, reader, out, progress.getvalue()


def test_report_metrics_by_hand(main_run):
    results, _, _, _ = main_run
    run = _runs(results)[("report.v1", 0.2, 0.8)]
    assert (run["cases"], run["generations"], run["repeats"]) == (6, 6, 1)
    m = run["metrics"]["exclude"]
    eff, ptx, cm, atel = (m["per_finding"][k] for k in ("pleural_effusion", "pneumothorax", "cardiomegaly",
                                                        "atelectasis"))
    assert (eff["tp"], eff["fp"], eff["fn"], eff["tn"]) == (2, 1, 0, 2)        # c5 uncertain: excluded
    assert eff["sensitivity"]["value"] == 1.0
    assert eff["specificity"]["value"] == pytest.approx(2 / 3)
    assert eff["ppv"]["value"] == pytest.approx(2 / 3)
    assert eff["npv"]["value"] == 1.0
    assert eff["f1"]["value"] == pytest.approx(0.8)
    assert (ptx["tp"], ptx["fp"], ptx["fn"], ptx["tn"]) == (1, 0, 0, 4)        # c2 uncertain: excluded
    assert ptx["f1"]["value"] == 1.0
    assert (cm["tp"], cm["fp"], cm["fn"], cm["tn"]) == (1, 0, 1, 4)
    assert cm["sensitivity"]["value"] == 0.5 and cm["npv"]["value"] == pytest.approx(0.8)
    assert cm["f1"]["value"] == pytest.approx(2 / 3)
    assert (atel["tn"], atel["f1"]["value"], atel["specificity"]["value"]) == (6, None, 1.0)
    assert m["macro"]["findings"] == ["atelectasis", "cardiomegaly", "consolidation", "edema",
                                      "pleural_effusion", "pneumothorax"]
    assert m["macro"]["f1"]["value"] == pytest.approx(MACRO_F1)               # undefined F1s left out
    assert (m["micro"]["tp"], m["micro"]["fp"], m["micro"]["fn"], m["micro"]["tn"]) == (4, 1, 1, 28)
    assert m["micro"]["f1"]["value"] == pytest.approx(0.8)
    assert m["micro"]["specificity"]["value"] == pytest.approx(28 / 29)
    lo, hi = m["macro"]["f1"]["ci"]
    assert 0 <= lo <= hi <= 1
    # uncertain as positive: c5 effusion becomes a FN, c2 pneumothorax a TP
    pos = run["metrics"]["positive"]["per_finding"]
    assert pos["pleural_effusion"]["f1"]["value"] == pytest.approx(4 / 6)
    assert (pos["pneumothorax"]["tp"], pos["pneumothorax"]["tn"]) == (2, 4)
    assert run["metrics"]["positive"]["macro"]["f1"]["value"] == pytest.approx(7 / 9)
    # uncertain as negative: c5 effusion a TN, c2 pneumothorax a TN
    neg = run["metrics"]["negative"]["per_finding"]
    assert (neg["pleural_effusion"]["tn"], neg["pneumothorax"]["tn"]) == (3, 5)
    assert run["metrics"]["negative"]["macro"]["f1"]["value"] == pytest.approx(MACRO_F1)


def test_normal_vs_abnormal_by_hand(main_run):
    results, _, _, _ = main_run
    abn = _runs(results)[("report.v1", 0.2, 0.8)]["metrics"]["exclude"]["per_finding"]["abnormal"]
    # truth: c1 c2 c3 c6 abnormal, c4 normal, c5 uncertain (excluded); predicted: c1-c4 abnormal
    assert (abn["tp"], abn["fp"], abn["fn"], abn["tn"]) == (3, 1, 1, 0)
    assert abn["sensitivity"]["value"] == 0.75 and abn["specificity"]["value"] == 0.0


def test_scores_by_hand(main_run):
    results, reader, _, _ = main_run
    run = _runs(results)[("finding_question.v1", None, None)]
    assert sorted(reader.scored) == [10, 20, 30, 40, 50, 60]
    scores = run["scores"]
    assert scores["pleural_effusion"]["auc"]["value"] == pytest.approx(5 / 6)
    assert (scores["pleural_effusion"]["n"], scores["pleural_effusion"]["positives"]) == (5, 2)
    assert scores["cardiomegaly"]["auc"]["value"] == 1.0
    assert scores["pneumothorax"]["auc"]["value"] == 1.0
    assert scores["atelectasis"]["auc"] == {"value": None, "ci": None}       # one class only
    assert scores["abnormal"]["auc"]["value"] == pytest.approx(0.75)          # max P(Yes) per image
    at_half = {t["threshold"]: t for t in scores["pleural_effusion"]["thresholds"]}[0.5]
    assert (at_half["tp"], at_half["fp"], at_half["fn"], at_half["tn"]) == (1, 1, 1, 2)
    # thresholded at 0.5 the scores also give confusion metrics
    eff = run["metrics"]["exclude"]["per_finding"]["pleural_effusion"]
    assert (eff["tp"], eff["fp"], eff["fn"], eff["tn"]) == (1, 1, 1, 2)


def test_unreadable_and_skipped_rows_are_listed(main_run):
    results, reader, _, _ = main_run
    ds = results["dataset"]
    assert [(u["row"], u["case_id"], u["error"]) for u in ds["unreadable"]] == [
        (7, "c7", "unreadable_image"), (8, "c8", "unreadable_image")]
    assert "image missing.png not found" in ds["unreadable"][0]["message"]
    assert "neither DICOM nor an image Pillow can read" in ds["unreadable"][1]["message"]
    assert [s["row"] for s in ds["skipped_rows"]] == [9]
    assert (ds["cases_in_manifest"], ds["cases_selected"], ds["cases_evaluated"]) == (8, 8, 6)
    assert sorted(c for c, *_ in reader.generated) == ["c1", "c2", "c3", "c4", "c5", "c6"]


def test_outputs_written(main_run):
    results, _, out, progress = main_run
    assert json.loads((out / "results.json").read_text()) == results
    assert results["published"]["average_f1"][0]["value"] == 0.81
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    r = next(r for r in rows if r["case_id"] == "c1" and r["prompt"] == "report.v1")
    assert (r["temperature"], r["top_p"], r["repeat"], r["model"]) == ("0.2", "0.8", "0", "scripted")
    assert r["text"] == REPORTS[10][0]
    assert (r["pred_pleural_effusion"], r["pred_cardiomegaly"], r["pred_edema"]) == ("present", "present",
                                                                                     "not_mentioned")
    assert r["seed"] == str(generation_seed(0, "c1", "report.v1", 0.2, 0.8, 0))
    s = next(r for r in rows if r["case_id"] == "c1" and r["prompt"] == "finding_question.v1")
    assert (s["score_pleural_effusion"], s["pred_pleural_effusion"], s["text"]) == ("0.9", "present", "")
    html = (out / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") >= 3     # F1 vs temperature, ROC, confusion matrices
    assert "0.81" in html and "Indiana/OpenI" in html and "Rows not evaluated" in html
    assert "http://" not in html and "https://" not in html   # self-contained
    assert "evaluate: 12/12 model calls (100%)" in progress and "ETA" in progress


def test_resume_recomputes_nothing(main_run, data_dir):
    results, _, out, _ = main_run
    again = ScriptedReader()
    plan = make_plan(prompts=["report.v1", "finding_question.v1"], bootstrap=200)
    second = _run(data_dir, out, again, plan, batch_size=4)
    assert again.generated == [] and again.scored == []
    assert second["work"] == {"model_calls_now": 0, "reused_from_per_image_csv": 12, "labels_changed_on_reuse": 0}
    assert second["runs"] == results["runs"]


def test_interrupted_run_resumes_where_it_stopped(tmp_path, data_dir):
    plan = make_plan(prompts=["report.v1"], temperatures=[0.2, 0.6], repeats=2, bootstrap=0)
    first = ScriptedReader(stop_after=5)
    with pytest.raises(KeyboardInterrupt):
        _run(data_dir, tmp_path, first, plan, batch_size=2)
    with open(tmp_path / "per_image.csv", newline="") as f:
        saved = {(r["case_id"], r["temperature"], r["repeat"]) for r in csv.DictReader(f)}
    assert len(saved) == 4                      # two model calls of two images; the third was in flight
    second = ScriptedReader()
    results = _run(data_dir, tmp_path, second, plan, batch_size=2)
    redone = {(c, f"{t:g}", str(r)) for c, _, t, _, r, _ in second.generated}
    assert len(second.generated) == 6 * 2 * 2 - 4 and not redone & saved
    assert results["work"] == {"model_calls_now": 20, "reused_from_per_image_csv": 4, "labels_changed_on_reuse": 0}


def test_row_cut_short_is_redone(tmp_path, data_dir):
    plan = make_plan(prompts=["report.v1"], bootstrap=0)
    _run(data_dir, tmp_path, ScriptedReader(), plan)
    path = tmp_path / "per_image.csv"
    path.write_bytes(path.read_bytes()[:-5])                 # the last row loses its end
    again = ScriptedReader()
    results = _run(data_dir, tmp_path, again, plan)
    assert len(again.generated) == 1
    assert results["runs"][0]["metrics"]["exclude"]["macro"]["f1"]["value"] == pytest.approx(MACRO_F1)
    with open(path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_repeats_sweep_and_agreement_by_hand(tmp_path, data_dir):
    reports = dict(REPORTS)
    # c1's third repeat misses the effusion: the output variance the paper warns about
    reports[10] = REPORTS[10] * 2 + ["There is no pleural effusion. There is no pneumothorax. There is cardiomegaly."]
    reader = ScriptedReader(reports=reports)
    plan = make_plan(prompts=["report.v1"], temperatures=[0.2, 0.6], repeats=3, bootstrap=50, seed=3)
    results = _run(data_dir, tmp_path, reader, plan)
    assert len(reader.generated) == 6 * 2 * 3
    assert len({seed for *_, seed in reader.generated}) == 36               # every generation its own seed
    runs = _runs(results)
    assert set(runs) == {("report.v1", 0.2, 0.8), ("report.v1", 0.6, 0.8)}
    run = runs[("report.v1", 0.6, 0.8)]
    eff = run["metrics"]["exclude"]["per_finding"]["pleural_effusion"]
    assert (eff["tp"], eff["fp"], eff["fn"], eff["tn"]) == (5, 3, 1, 6)       # repeats pooled
    assert eff["f1"]["value"] == pytest.approx(10 / 14)
    agr = run["agreement"]
    assert agr["pleural_effusion"] == {"n": 6, "all_agree": pytest.approx(5 / 6),
                                       "pairwise": pytest.approx((5 + 1 / 3) / 6)}
    assert agr["pneumothorax"]["all_agree"] == 1.0
    assert agr["all_findings_agree"] == {"n": 6, "value": pytest.approx(5 / 6)}
    by_repeat = run["macro_f1_by_repeat"]
    assert by_repeat["values"] == pytest.approx([MACRO_F1, MACRO_F1, (0.5 + 1.0 + 2 / 3) / 3])
    assert by_repeat["mean"] == pytest.approx((2 * MACRO_F1 + (0.5 + 1.0 + 2 / 3) / 3) / 3)
    assert "Agreement across repeats" in (tmp_path / "report.html").read_text()


def test_context_prompt_carries_the_manifest_context(tmp_path, data_dir):
    reader = ScriptedReader()
    _run(data_dir, tmp_path, reader, make_plan(prompts=["report_context.v1"], limit=1, bootstrap=0))
    [prompt] = reader.prompts_seen
    assert prompt.key == "report_context.v1"
    assert "67" in prompt.user and "shortness of breath" in prompt.user


def test_question_prompts_with_and_without_context(tmp_path, data_dir):
    reader = ScriptedReader()
    plan = make_plan(prompts=["report.v1", "finding_question.v1", "finding_question.v1+context"], limit=1,
                     bootstrap=0)
    results = _run(data_dir, tmp_path, reader, plan)
    plain, with_context = reader.questions_seen            # c1: 67 y, female, shortness of breath
    assert list(plain) == list(with_context) == ["atelectasis", "cardiomegaly", "consolidation", "edema",
                                                 "pleural_effusion", "pneumothorax"]
    assert {p.key for p in [*plain.values(), *with_context.values()]} == {"finding_question.v1"}
    assert all("67" not in p.user and "shortness of breath" not in p.user for p in plain.values())
    assert all("67" in p.user and "shortness of breath" in p.user for p in with_context.values())
    [report_prompt] = reader.prompts_seen
    assert "shortness of breath" not in report_prompt.user
    with open(tmp_path / "per_image.csv", newline="") as f:
        variants = {r["prompt"]: r["context"] for r in csv.DictReader(f)}
    assert variants == {"report.v1": "without", "finding_question.v1": "without",
                        "finding_question.v1+context": "with"}
    assert [(r["prompt"], r["context"]) for r in results["runs"]] == [
        ("report.v1", "without"), ("finding_question.v1", "without"), ("finding_question.v1+context", "with")]
    assert "scores" in results["runs"][2]
    assert "<h2>finding_question.v1+context</h2>" in (tmp_path / "report.html").read_text()


def test_context_variant_is_part_of_the_cache_key(tmp_path, data_dir):
    _run(data_dir, tmp_path, ScriptedReader(), make_plan(prompts=["finding_question.v1"], bootstrap=0))
    again = ScriptedReader()
    results = _run(data_dir, tmp_path, again, make_plan(prompts=["finding_question.v1+context"], bootstrap=0))
    assert len(again.scored) == 6 and results["work"]["reused_from_per_image_csv"] == 0


def test_resume_labels_the_stored_text_again(tmp_path, data_dir, monkeypatch):
    import prompts

    plan = make_plan(prompts=["report.v1", "finding_question.v1"], bootstrap=0)
    first = _run(data_dir, tmp_path, ScriptedReader(), plan)
    eff = _runs(first)[("report.v1", 0.2, 0.8)]["metrics"]["exclude"]["per_finding"]["pleural_effusion"]
    assert (eff["tp"], eff["fp"]) == (2, 1)
    real = prompts.extract_findings

    def never_effusion(text):
        """A changed labeler: the runner's default, except that it never finds an effusion."""
        return [SimpleNamespace(name=f.name, presence="absent" if f.name == "pleural_effusion" else f.presence)
                for f in real(text)]

    monkeypatch.setattr(prompts, "extract_findings", never_effusion)
    again = ScriptedReader()
    second = _run(data_dir, tmp_path, again, plan)
    assert again.generated == [] and again.scored == []                   # the model is not called again
    # c1, c2, c4 said present, c6 did not mention it; c3, c5 were already absent; score rows unchanged
    assert second["work"] == {"model_calls_now": 0, "reused_from_per_image_csv": 12, "labels_changed_on_reuse": 4}
    eff = _runs(second)[("report.v1", 0.2, 0.8)]["metrics"]["exclude"]["per_finding"]["pleural_effusion"]
    assert (eff["tp"], eff["fp"], eff["fn"], eff["tn"]) == (0, 0, 2, 3)
    with open(tmp_path / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["pred_pleural_effusion"] for r in rows if r["prompt"] == "report.v1"} == {"absent"}
    assert {r["pred_pleural_effusion"] for r in rows if r["prompt"] == "finding_question.v1"} == {"present",
                                                                                                 "absent"}
    assert len(rows) == 12


def test_no_path_in_outputs_without_an_id_column(tmp_path, data_dir):
    """Case ids and messages in per_image.csv, results.json and report.html never carry the folders."""
    site = tmp_path / "export"
    (site / "MRN12345678" / "ACC0042").mkdir(parents=True)
    shutil.copy(data_dir / "images" / "case1.png", site / "MRN12345678" / "ACC0042" / "frontal.png")
    shutil.copy(data_dir / "images" / "corrupt.png", site / "MRN12345678" / "ACC0042" / "lateral.png")
    (site / "labels.csv").write_text("path,pleural_effusion\n"
                                     "MRN12345678/ACC0042/frontal.png,1\n"
                                     "MRN12345678/ACC0042/lateral.png,1\n"
                                     "MRN12345678/ACC0099/frontal.png,0\n")
    out = tmp_path / "out"
    results = evaluate(site / "labels.csv", ScriptedReader(), make_plan(bootstrap=0), out, progress=io.StringIO())
    assert [u["message"] for u in results["dataset"]["unreadable"]] == [
        "image lateral.png is neither DICOM nor an image Pillow can read (PNG, JPEG): "
        "cannot identify image file 'lateral.png'",
        "image frontal.png not found"]
    assert all(u["case_id"].startswith("img-") for u in results["dataset"]["unreadable"])
    for name in ("per_image.csv", "results.json", "report.html"):
        text = (out / name).read_text()
        assert "MRN12345678" not in text and "ACC00" not in text, name


def test_split_is_recorded(main_run):
    results, *_ = main_run
    assert results["dataset"]["split"] == {"kept": "all", "source": None, "rows_outside_split": 0}


def test_pediatric_preset(tmp_path, data_dir):
    plan = make_plan("pediatric-abnormal", bootstrap=0)
    assert (plan.max_age, plan.prompts, plan.preset) == (17, ("report.v1",), "pediatric-abnormal")
    reader = ScriptedReader()
    results = _run(data_dir, tmp_path, reader, plan)
    assert sorted(c for c, *_ in reader.generated) == ["c3", "c4"]            # ages 8 and 12
    abn = results["runs"][0]["metrics"]["exclude"]["per_finding"]["abnormal"]
    assert (abn["tp"], abn["fp"], abn["fn"], abn["tn"]) == (1, 1, 0, 0)
    assert results["dataset"]["filters"] == {"min_age": None, "max_age": 17, "limit": None}


def test_presets_match_the_paper():
    sweep = make_plan("temperature-sweep")
    assert (sweep.temperatures, sweep.top_ps, sweep.repeats) == ((0.2, 0.4, 0.6, 0.8, 1.0), (0.8,), 10)
    assert make_plan("prompt-comparison").prompts == ("report.v1", "report_context.v1", "finding_question.v1",
                                                      "finding_question.v1+context")
    assert make_plan("temperature-sweep", repeats=2, temperatures=[0.4]).temperatures == (0.4,)
    assert set(PRESETS) == {"temperature-sweep", "prompt-comparison", "pediatric-abnormal"}


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "everything"}, "unknown preset 'everything'; choose one of temperature-sweep"),
    ({"prompts": ["differential.v1"]}, "prompt 'differential.v1' cannot be evaluated; use one of report.v1"),
    ({"temperatures": [5.0]}, r"temperature 5.0 is outside 0-2"),
    ({"top_ps": [0.0]}, r"top_p 0.0 is outside \(0, 1\]"),
    ({"repeats": 0}, "repeats must be at least 1, got 0"),
    ({"limit": 0}, "limit must be at least 1, got 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1, got 0"),
    ({"bootstrap": -1}, "bootstrap resamples must be >= 0, got -1"),
    ({"min_age": 18, "max_age": 17}, "min_age 18 is above max_age 17"),
])
def test_plan_errors(kwargs, message):
    preset = kwargs.pop("preset", None)
    with pytest.raises(PlanError, match=message):
        make_plan(preset, **kwargs)


def test_empty_prompt_list():
    with pytest.raises(PlanError, match="no prompt to evaluate; pass --prompt"):
        Plan(prompts=())


def test_reports_cut_at_the_token_cap_are_counted_and_marked(tmp_path, data_dir):
    reader = ScriptedReader(cut=frozenset({10, 20}))
    results = _run(data_dir, tmp_path, reader, make_plan(prompts=["report.v1"], bootstrap=0))
    (run,) = results["runs"]
    assert run["truncated_at_cap"] == 2
    with open(tmp_path / "per_image.csv", newline="") as f:
        reasons = sorted(r["finish_reason"] for r in csv.DictReader(f))
    assert reasons.count("length") == 2 and set(reasons) == {"eos", "length"}
    assert "2 report(s) stopped at the token cap" in (tmp_path / "report.html").read_text()
