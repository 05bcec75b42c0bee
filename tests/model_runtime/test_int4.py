"""torchao int4 weight-only quantization on the tiny model (CPU): load, generate, identity, errors, settings."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from model_runtime import (
    GenerationRequest, GenerationSettings, InvalidRequest, ModelConfig, ModelLoadError, load,
)
from model_runtime.quantize import SKIP_QUANTIZATION, quantization_config

torchao = pytest.importorskip("torchao")  # a dependency in pyproject; absent only on a partial install

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def int4_engine(tiny_model_dir):
    return load(ModelConfig(model=str(tiny_model_dir), device="cpu", quantization="int4", int4_group_size=32))


def _linears(engine):
    return {n: m for n, m in engine.model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_int4_quantizes_only_the_language_model_linears(int4_engine):
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor

    linears = _linears(int4_engine)
    lm = {n: m for n, m in linears.items() if ".language_model." in n}
    kept = {n: m for n, m in linears.items() if n not in lm}
    assert len(lm) == 2 * 7  # tiny: 2 layers x q, k, v, o, gate, up, down
    assert all(isinstance(m.weight, Int4OpaqueTensor) and list(m.weight.block_size) == [1, 32] for m in lm.values())
    assert {"lm_head"} <= set(kept) and any("vision_tower" in n for n in kept) and any(
        "multi_modal_projector" in n for n in kept)
    assert not any(isinstance(m.weight, Int4OpaqueTensor) for m in kept.values())
    assert all(any(s in n for s in SKIP_QUANTIZATION) for n in kept)


def test_int4_generates_and_stays_close_to_the_unquantized_model(int4_engine, tiny_engine, images, report_prompt):
    req = GenerationRequest(images[0], report_prompt, GREEDY)
    r = int4_engine.generate([req])[0]
    assert r.new_tokens == len(r.token_ids) == 8 and r.finish_reason == "length"
    # 4 bits per weight in groups of 32 on random weights: every prompt position's logits still point the same way
    full, quantized = tiny_engine.prefill_logits(req), int4_engine.prefill_logits(req)
    assert full.shape == quantized.shape
    assert torch.nn.functional.cosine_similarity(full, quantized, dim=-1).min() > 0.95
    assert not torch.equal(full, quantized)  # it did quantize


def test_int4_batched_greedy_equals_batch_size_one(int4_engine, images, report_prompt, question_prompt):
    reqs = [GenerationRequest(images[0], question_prompt, GREEDY), GenerationRequest(images[1], report_prompt, GREEDY)]
    batched = int4_engine.generate(reqs)
    assert [r.token_ids for r in batched] == [int4_engine.generate([q])[0].token_ids for q in reqs]


def test_identity_records_quantization_kernel_and_group_size(int4_engine, tiny_engine, images, report_prompt):
    ident = int4_engine.identity
    assert (ident.quantization, ident.kernel, ident.decode) == ("int4", "torchao-int4-g32-cpu", "eager")
    assert tiny_engine.identity.kernel == "torch"
    r = int4_engine.generate([GenerationRequest(images[0], report_prompt, GREEDY)])[0]
    assert (r.model["quantization"], r.model["kernel"], r.model["decode"]) == ("int4", "torchao-int4-g32-cpu", "eager")


def test_default_group_size_is_the_largest_that_divides_every_layer(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())["llama"]
    expected = next(g for g in (128, 64, 32) if cfg["hidden_size"] % g == 0 and cfg["intermediate_size"] % g == 0)
    engine = load(ModelConfig(model=str(tiny_model_dir), device="cpu", quantization="int4"))
    assert engine.identity.kernel == f"torchao-int4-g{expected}-cpu"


def test_model_key_separates_drafts_of_other_kernels_and_decode_paths(int4_engine, tiny_engine, tiny_static_engine):
    from dataclasses import asdict as identity_dict  # what cds_hooks.runtime.identity_dict does to a ModelIdentity

    from cds_hooks.pipeline import model_key

    keys = {model_key(identity_dict(e.identity)) for e in (int4_engine, tiny_engine, tiny_static_engine)}
    assert len(keys) == 3
    assert "/torchao-int4-g32-cpu/eager" in model_key(identity_dict(int4_engine.identity))
    assert model_key(identity_dict(tiny_static_engine.identity)).endswith("/torch/static")


def test_a_group_size_that_does_not_divide_a_layer_is_refused(tiny_model_dir):
    hidden = json.loads((tiny_model_dir / "config.json").read_text())["llama"]["hidden_size"]
    assert hidden % 128  # the tiny model's 64 channels
    with pytest.raises(ModelLoadError, match=rf"int4 group size 128 does not divide the input size of "
                                             rf"q/k/v/o_proj, gate/up_proj \({hidden}\).*; choose a group size"):
        load(ModelConfig(model=str(tiny_model_dir), device="cpu", quantization="int4", int4_group_size=128))


def test_group_size_256_is_refused_on_cpu(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="int4 group size 256 is not supported on cpu; use one of 32, 64, 128"):
        load(ModelConfig(model=str(tiny_model_dir), device="cpu", quantization="int4", int4_group_size=256))


def test_group_size_settings_errors_are_clear():
    with pytest.raises(InvalidRequest, match="int4_group_size 48 is not supported; use one of 32, 64, 128, 256"):
        ModelConfig(model="x", quantization="int4", int4_group_size=48)
    with pytest.raises(InvalidRequest, match="int4_group_size is set but quantization is '4bit'"):
        ModelConfig(model="x", quantization="4bit", int4_group_size=32)
    with pytest.raises(InvalidRequest, match="quantization 'int3' is not supported; use one of none, 8bit, 4bit, int4"):
        ModelConfig(model="x", quantization="int3")


def test_int4_on_cuda_needs_bfloat16():
    with pytest.raises(ModelLoadError, match="tinygemm kernel, which takes bfloat16 only; got dtype float32"):
        quantization_config("int4", device="cuda", group_size=128, dtype=torch.float32)


def test_int4_config_keeps_the_vision_tower_projector_and_lm_head():
    qc = quantization_config("int4", device="cpu", group_size=64, dtype=torch.float32)
    assert type(qc).__name__ == "TorchAoConfig" and set(qc.modules_to_not_convert) == set(SKIP_QUANTIZATION)
    assert qc.quant_type.group_size == 64


def test_missing_torchao_says_what_to_install(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # makes `import torchao` raise ImportError
    with pytest.raises(ModelLoadError, match=r"int4 quantization needs torchao: `pip install 'torchao"):
        load(ModelConfig(model=str(tiny_model_dir), device="cpu", quantization="int4"))


def test_settings_take_int4_and_name_the_variable_on_a_bad_value():
    from cds_hooks.errors import SettingsError
    from cds_hooks.settings import load_settings

    dev = {"CXR_CDS_AUTH": "none"}
    assert load_settings({**dev, "CXR_CDS_QUANTIZATION": "INT4"}).quantization == "int4"
    with pytest.raises(SettingsError, match=r"CXR_CDS_QUANTIZATION='int5' is not valid: "
                                            r"must be one of none, 8bit, 4bit, int4"):
        load_settings({**dev, "CXR_CDS_QUANTIZATION": "int5"})


def test_cli_generate_with_int4(tiny_model_dir, tmp_path):
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from cds_hooks.cli import main

    pytest.importorskip("prompts").render("report.v1")
    png = tmp_path / "cxr.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (96, 80), dtype=np.uint8)).save(png)
    res = CliRunner().invoke(main, ["generate", "--model", str(tiny_model_dir), "--image", str(png), "--device", "cpu",
                                    "--quantization", "int4", "--temperature", "0", "--max-new-tokens", "4", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["new_tokens"] == 4 and out["model"]["quantization"] == "int4"
    assert out["model"]["kernel"].startswith("torchao-int4-g") and out["model"]["kernel"].endswith("-cpu")
    bad = CliRunner().invoke(main, ["generate", "--model", str(tiny_model_dir), "--image", str(png),
                                    "--quantization", "int5"])
    assert bad.exit_code == 2 and "'int5' is not one of 'none', '8bit', '4bit', 'int4'" in bad.output
