"""`cxr-cds evaluate` through click's CliRunner: the real tiny model end to end, and the error paths."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cds_hooks.cli import main


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory):
    """Three tiny PNG radiographs with labels: one normal, one effusion, one uncertain pneumothorax."""
    root = tmp_path_factory.mktemp("tiny-dataset")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(40, 48), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "labels.csv").write_text(
        "path,age,sex,pleural_effusion,pneumothorax,cardiomegaly\n"
        "img0.png,70,F,0,0,0\n"
        "img1.png,8,M,1,0,0\n"
        "img2.png,40,M,0,-1,1\n")
    return root / "labels.csv"


@pytest.mark.slow
def test_tiny_model_end_to_end_and_resume(tiny_model_dir, tiny_manifest, tmp_path):
    out = tmp_path / "out"
    args = ["evaluate", "--dataset", str(tiny_manifest), "--model", str(tiny_model_dir), "--out", str(out),
            "--prompt", "report.v1", "--prompt", "finding_question.v1", "--temperature", "0.8",
            "--repeats", "2", "--max-new-tokens", "4", "--bootstrap", "20",
            "--batch-size", "3", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "evaluated 3 of 3 cases; 9 model calls now, 0 reused" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["dtype"] == "float32"
    runs = {(r["prompt"], r["temperature"]): r for r in results["runs"]}
    assert set(runs) == {("report.v1", 0.8), ("finding_question.v1", None)}
    assert runs[("report.v1", 0.8)]["generations"] == 6 and "agreement" in runs[("report.v1", 0.8)]
    for auc in runs[("finding_question.v1", None)]["scores"].values():
        assert auc["auc"]["value"] is None or 0.0 <= auc["auc"]["value"] <= 1.0
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 + 3
    for r in rows:
        if r["prompt"] == "finding_question.v1":
            assert 0.0 <= float(r["score_pleural_effusion"]) <= 1.0
        else:
            assert 1 <= int(r["new_tokens"]) <= 4
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "0 model calls now, 9 reused from per_image.csv" in again.output


def test_bad_model_directory(tiny_manifest, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--dataset", str(tiny_manifest), "--model",
                                       str(tmp_path / "no-model"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "no-model" in result.output
    assert "Traceback" not in result.output


def test_bad_plan_fails_before_loading_the_model(tiny_manifest, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--dataset", str(tiny_manifest), "--model", "never-loaded",
                                       "--out", str(tmp_path), "--temperature", "5"])
    assert result.exit_code == 1
    assert result.output == "error: temperature 5.0 is outside 0-2 (0 or <= 0.001 = greedy)\n"


def test_bad_manifest_fails_before_loading_the_model(tmp_path):
    (tmp_path / "m.csv").write_text("file,edema\na.png,1\n")
    result = CliRunner().invoke(main, ["evaluate", "--dataset", str(tmp_path / "m.csv"), "--model", "x",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "error: cannot tell the layout of" in result.output


def test_unknown_preset_is_a_usage_error(tiny_manifest, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--dataset", str(tiny_manifest), "--model", "x",
                                       "--out", str(tmp_path), "--preset", "all-of-them"])
    assert result.exit_code == 2
    assert "'all-of-them' is not one of" in result.output


def test_split_without_split_column_fails_before_loading_the_model(tiny_manifest, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--dataset", str(tiny_manifest), "--model", "never-loaded",
                                       "--out", str(tmp_path), "--split", "test"])
    assert result.exit_code == 1
    assert result.output.startswith("error: --split test: manifest ") and "has no `split` column" in result.output


def test_mimic_without_split_file_warns(tmp_path, data_dir):
    import shutil

    for name in ("mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-metadata.csv"):
        shutil.copy(data_dir / "mimic" / name, tmp_path)
    result = CliRunner().invoke(main, ["evaluate", "--dataset", str(tmp_path / "mimic-cxr-2.0.0-chexpert.csv"),
                                       "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1                                     # no model here: stops after the warning
    assert "warning: no mimic-cxr-2.0.0-split.csv(.gz) beside the labels" in result.output
    assert "not comparable with the paper's test-set F1 0.81" in result.output


def test_mimic_split_is_announced(tmp_path, data_dir):
    labels = data_dir / "mimic" / "mimic-cxr-2.0.0-chexpert.csv"
    result = CliRunner().invoke(main, ["evaluate", "--dataset", str(labels), "--model", str(tmp_path / "no-model"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "split: test only (mimic-cxr-2.0.0-split.csv; 1 rows outside it left out)" in result.output
    assert "warning" not in result.output
