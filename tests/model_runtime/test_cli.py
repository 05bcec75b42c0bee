"""`cxr-cds generate` and `cxr-cds model init-tiny|convert` through click's CliRunner."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cds_hooks.cli import main


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "cxr.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (96, 80), dtype=np.uint8)).save(path)
    return path


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_generate_json_has_text_ids_timings_and_model(tiny_model_dir, png):
    pytest.importorskip("prompts").render("report.v1")
    res = run("generate", "--model", tiny_model_dir, "--image", png, "--temperature", "0", "--max-new-tokens", "6",
              "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["token_ids"]) == out["new_tokens"] == 6
    assert out["prompt_token_ids"][:2] == [1, 1] and out["prompt_token_ids"].count(-200) == 1
    assert out["model"]["prompt_id"] and out["model"]["quantization"] == "none"
    assert {"queue_ms", "prefill_ms", "decode_ms"} <= set(out["timings"]) and out["task"] == "report"
    assert out["status"] == "preliminary" and out["ai_generated"] is True
    assert out["notice"] == "AI-generated draft for clinician review, not a final report."


def test_generate_static_decode_gives_the_same_json_tokens(tiny_model_dir, png):
    pytest.importorskip("prompts").render("report.v1")
    args = ("generate", "--model", tiny_model_dir, "--image", png, "--temperature", "0", "--max-new-tokens", "6",
            "--json")
    eager, static = run(*args), run(*args, "--decode", "static")
    assert static.exit_code == 0, static.output
    assert json.loads(static.stdout)["token_ids"] == json.loads(eager.stdout)["token_ids"]


def test_generate_question_prints_text(tiny_model_dir, png):
    pytest.importorskip("prompts").render("question.v1", question="Is the heart enlarged?")
    res = run("generate", "--model", tiny_model_dir, "--image", png, "--task", "question", "--question",
              "Is the heart enlarged?", "--temperature", "0", "--max-new-tokens", "3")
    assert res.exit_code == 0, res.output
    # the draft notice comes first, on stderr; stdout holds the text alone
    assert res.stderr.splitlines()[0] == "AI-generated draft for clinician review, not a final report."
    assert "AI-generated" not in res.stdout


def test_generate_16_bit_png_fails_with_one_line(tiny_model_dir, tmp_path):
    path = tmp_path / "x16.png"
    Image.fromarray(np.full((32, 32), 4000, dtype=np.uint16)).save(path)
    res = run("generate", "--model", tiny_model_dir, "--image", path)
    assert res.exit_code == 1
    assert res.stderr.strip().startswith("error: image must be 8-bit") and len(res.stderr.strip().splitlines()) == 1


def test_generate_question_task_needs_a_question(tiny_model_dir, png):
    res = run("generate", "--model", tiny_model_dir, "--image", png, "--task", "question")
    assert res.exit_code == 1 and "error: --task question needs --question TEXT" in res.stderr


def test_generate_missing_model_directory(png, tmp_path):
    res = run("generate", "--model", tmp_path / "nothing-here", "--image", png)
    assert res.exit_code == 1
    assert f"error: model directory {tmp_path / 'nothing-here'} not found" in res.stderr
    assert "Traceback" not in res.output and "hub" not in res.stderr.split(";")[0]


def test_generate_unreadable_image(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    res = run("generate", "--model", tiny_model_dir, "--image", bad)
    assert res.exit_code == 1 and "is not a readable PNG/JPEG image" in res.stderr


def test_model_init_tiny_and_convert(tmp_path):
    res = run("model", "init-tiny", tmp_path / "tiny", "--seed", "3")
    assert res.exit_code == 0 and "meaningless text" in res.stdout
    assert (tmp_path / "tiny" / "model.safetensors.index.json").is_file()
    res = run("model", "convert", tmp_path / "tiny", tmp_path / "native")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "native" / "cxr_cds_native.json").is_file()
    res = run("model", "convert", tmp_path / "tiny", tmp_path / "native")
    assert res.exit_code == 1 and "exists and is not empty" in res.stderr
