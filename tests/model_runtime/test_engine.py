"""Generation on the tiny model: exact vision features, batching, sampling, scores, precision variants."""
from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

from model_runtime import (
    IMAGE_SENTINEL, Engine, GenerationRequest, GenerationSettings, InvalidRequest, ModelConfig, ModelLoadError,
    convert, load,
)
from model_runtime.engine import sample, sample_batch
from model_runtime.loader import SKIP_QUANTIZATION, quantization_config, read_published_tensors
from model_runtime.preprocess import preprocess

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=12)


def openclip_tower_features(t: dict[str, torch.Tensor], pixels: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Independent float64 implementation of the OpenCLIP-style tower + projector from the reference facts.

    (B, 1, S, S) -> (B, N, H): conv (no bias) -> row-major patches -> class token first -> + positional
    -> ln_pre -> pre-LN blocks (MHA with in_proj rows q, k, v; exact-GELU MLP) -> ln_post on all tokens
    -> drop the class token -> mm_projector Linear.
    """
    w = {k: v.double() for k, v in t.items()}
    vis = cfg["clip_vision_cfg"]
    width, patch = vis["width"], vis["patch_size"]
    heads = width // vis.get("head_width", 64)
    x = torch.nn.functional.conv2d(pixels.double(), w["vision_tower.conv1.weight"], stride=patch)  # (B, W, g, g)
    x = x.flatten(2).transpose(1, 2)                                                               # (B, g*g, W)
    cls = w["vision_tower.class_embedding"].expand(x.shape[0], 1, width)
    x = torch.cat([cls, x], dim=1) + w["vision_tower.positional_embedding"]

    def ln(v, name):
        mu = v.mean(-1, keepdim=True)
        var = ((v - mu) ** 2).mean(-1, keepdim=True)
        return (v - mu) / torch.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]

    x = ln(x, "vision_tower.ln_pre")
    for i in range(vis["layers"]):
        p = f"vision_tower.transformer.resblocks.{i}"
        h = ln(x, f"{p}.ln_1")
        qkv = h @ w[f"{p}.attn.in_proj_weight"].T + w[f"{p}.attn.in_proj_bias"]
        q, k, v = qkv.split(width, dim=-1)
        b, n, _ = q.shape
        q, k, v = (z.reshape(b, n, heads, width // heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2) / math.sqrt(width // heads)).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(b, n, width)
        x = x + o @ w[f"{p}.attn.out_proj.weight"].T + w[f"{p}.attn.out_proj.bias"]
        h = ln(x, f"{p}.ln_2")
        h = h @ w[f"{p}.mlp.c_fc.weight"].T + w[f"{p}.mlp.c_fc.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        x = x + h @ w[f"{p}.mlp.c_proj.weight"].T + w[f"{p}.mlp.c_proj.bias"]
    x = ln(x, "vision_tower.ln_post")[:, 1:]
    return x @ w["mm_projector.weight"].T + w["mm_projector.bias"]


def test_image_features_equal_an_independent_openclip_implementation(tiny_engine, tiny_model_dir, images,
                                                                     report_prompt):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    tensors = read_published_tensors(tiny_model_dir)
    expected = openclip_tower_features(tensors, preprocess(images[:2], 64), cfg)  # (2, 16, 64)
    batch = tiny_engine.prepare(images[:2], [report_prompt, report_prompt])
    cut = batch.prompt_ids[0].index(IMAGE_SENTINEL)
    for row in range(2):
        start = batch.inputs_embeds.shape[1] - batch.prompt_lengths[row] + cut  # left padding offset
        got = batch.inputs_embeds[row, start:start + 16].double()
        torch.testing.assert_close(got, expected[row], rtol=1e-4, atol=1e-4)


def test_prompt_length_counts_the_expanded_image(tiny_engine, images, report_prompt):
    result = tiny_engine.generate([GenerationRequest(images[0], report_prompt, GREEDY)])[0]
    assert result.prompt_token_ids.count(IMAGE_SENTINEL) == 1
    assert result.prompt_token_ids[:2] == (1, 1)  # double BOS, as the original
    assert result.prompt_tokens == len(result.prompt_token_ids) - 1 + 16


def test_batched_greedy_equals_batch_size_one(tiny_engine, images, report_prompt, question_prompt):
    requests = [GenerationRequest(images[0], report_prompt, GREEDY),
                GenerationRequest(images[1], question_prompt, GREEDY),  # shorter prompt: left-padded
                GenerationRequest(images[2], report_prompt, GenerationSettings(temperature=0, max_new_tokens=5))]
    single = [tiny_engine.generate([r])[0] for r in requests]
    batched = tiny_engine.generate(requests)
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.new_tokens for r in batched] == [12, 12, 5]


def test_result_carries_model_and_prompt_identity_and_timings(tiny_engine, images, report_prompt):
    r = tiny_engine.generate([GenerationRequest(images[0], report_prompt, GREEDY)])[0]
    assert r.model == {"name": tiny_engine.identity.name, "revision": tiny_engine.identity.revision, "dtype": "float32",
                       "quantization": "none", "kernel": "torch", "decode": "eager", "prompt_id": "report",
                       "prompt_version": "v1"}
    assert {"queue_ms", "prefill_ms", "decode_ms"} <= set(r.timings)
    assert r.finish_reason == "length" and r.new_tokens == len(r.token_ids) == 12
    assert set(r.to_json()) >= {"text", "token_ids", "prompt_token_ids", "timings", "model"}


def test_seeded_sampling_is_reproducible_and_independent_of_batching(tiny_engine, images, report_prompt):
    s = GenerationSettings(temperature=1.0, top_p=0.95, max_new_tokens=10, seed=11)
    a = tiny_engine.generate([GenerationRequest(images[0], report_prompt, s)])[0]
    b = tiny_engine.generate([GenerationRequest(images[1], report_prompt, GREEDY),
                              GenerationRequest(images[0], report_prompt, s)])[1]
    assert a.token_ids == b.token_ids


def test_new_token_cap_is_the_originals_rule(tiny_engine):
    # min(512, 2048 - prompt - 1) with the original's constant 2048 context, whatever the checkpoint's
    # max_position_embeddings (2048 in the tiny config, 4096 in Llama 2's)
    assert tiny_engine.model.config.text_config.max_position_embeddings == 2048
    assert tiny_engine.max_new_tokens(400, GenerationSettings()) == 512
    assert tiny_engine.max_new_tokens(1121, GenerationSettings()) == 512   # the real report prompt
    assert tiny_engine.max_new_tokens(1600, GenerationSettings()) == 447
    assert tiny_engine.max_new_tokens(2046, GenerationSettings()) == 1
    assert tiny_engine.max_new_tokens(10, GenerationSettings(max_new_tokens=7)) == 7
    with pytest.raises(InvalidRequest, match="the prompt is 2047 tokens .* original's 2048-token context leaves no"):
        tiny_engine.max_new_tokens(2047, GenerationSettings())


def test_sampling_matches_transformers_warpers_in_order():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    )

    logits = torch.randn(300, generator=torch.Generator().manual_seed(0)) * 3
    s = GenerationSettings(temperature=0.4, top_p=0.8, top_k=50)
    scores = logits[None].clone()
    for warper in (TemperatureLogitsWarper(0.4), TopKLogitsWarper(50), TopPLogitsWarper(0.8)):
        scores = warper(None, scores)
    expected = scores[0].softmax(-1)
    draws = [sample(logits, s, torch.Generator().manual_seed(i)) for i in range(400)]
    support = set(torch.nonzero(expected).flatten().tolist())
    assert set(draws) <= support and len(support) < 50
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert sample(logits, s, g1) == int(torch.multinomial(expected, 1, generator=g2))


def test_greedy_threshold_is_temperature_0_001():
    assert GenerationSettings(temperature=0.001).greedy and not GenerationSettings(temperature=0.0011).greedy


def test_score_yes_no_is_one_batched_prefill_per_image(tiny_engine, images, question_prompt, report_prompt):
    scores = tiny_engine.score_yes_no(images[0], [question_prompt, report_prompt])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    tok = tiny_engine.tokenizer
    logits = tiny_engine.prefill_logits(GenerationRequest(images[0], question_prompt))[-1]
    yes, no = logits[tok.answer_token_id("Yes")], logits[tok.answer_token_id("No")]
    assert scores[0] == pytest.approx(float(torch.sigmoid(yes - no)), abs=1e-5)


def test_published_and_converted_checkpoints_give_identical_logits(tiny_model_dir, tmp_path, images, report_prompt,
                                                                   tiny_engine):
    native_dir = convert(tiny_model_dir, tmp_path / "native")
    assert (native_dir / "cxr_cds_native.json").is_file()
    native = load(ModelConfig(model=str(native_dir), device="cpu"))
    request = GenerationRequest(images[0], report_prompt, GREEDY)
    assert torch.equal(tiny_engine.prefill_logits(request), native.prefill_logits(request))
    assert native.identity.name == tiny_engine.identity.name
    assert native.generate([request])[0].token_ids == tiny_engine.generate([request])[0].token_ids


def test_convert_refuses_a_non_empty_destination(tiny_model_dir, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    from model_runtime import ModelLoadError

    with pytest.raises(ModelLoadError, match="destination .*busy exists and is not empty"):
        convert(tiny_model_dir, tmp_path / "busy")


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_load_and_generate_on_cpu(tiny_model_dir, images, report_prompt, quantization):
    _need_bitsandbytes()
    engine = load(ModelConfig(model=str(tiny_model_dir), device="cpu", quantization=quantization))
    _assert_bnb_fields(engine.model.config.quantization_config, quantization)  # what the model was built with
    layer_types = {type(m).__name__ for n, m in engine.model.named_modules() if "language_model.layers" in n}
    assert ("Linear8bitLt" if quantization == "8bit" else "Linear4bit") in layer_types
    # The vision tower, the projector and lm_head stay unquantized.
    kept = [m for n, m in engine.model.named_modules()
            if ("vision_tower" in n or "multi_modal_projector" in n or n == "lm_head") and "Linear" in type(m).__name__]
    assert kept and all(type(m) in (torch.nn.Linear,) or type(m).__name__ == "LinearActivation" for m in kept)
    r = engine.generate([GenerationRequest(images[0], report_prompt, GenerationSettings(temperature=0, max_new_tokens=4))])[0]
    assert r.new_tokens == 4 and r.model["quantization"] == quantization
    if quantization == "4bit":
        # bitsandbytes repacks 4-bit weights on first use on CPUs with AVX512-BF16 (a different kernel);
        # say which path this machine ran, so a failure on one CPU family is read as such
        from bitsandbytes.functional import has_avx512bf16

        packed = [getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                  for n, m in engine.model.named_modules() if type(m).__name__ == "Linear4bit"]
        path = "packed AVX512-BF16" if has_avx512bf16() else "generic"
        print(f"bitsandbytes 4-bit CPU path: {path}")
        assert all(packed) if has_avx512bf16() else not any(packed), path


def test_tiny_model_fits_every_bitsandbytes_cpu_path(tiny_model_dir):
    """On any CPU: every 4-bit-quantized dimension meets the packed (AVX512-BF16) path's constraints.

    That path repacks each weight (N out, K in) in 32-row blocks of 64-wide NF4 blocks: N % 32 == 0,
    K even and the weight a whole number of 64-value blocks. Checked from the config, not the CPU.
    """
    config = json.loads((tiny_model_dir / "config.json").read_text())["llama"]
    h, i = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    shapes = {"q_proj": (h, h), "k_proj": (kv * h // heads, h), "v_proj": (kv * h // heads, h), "o_proj": (h, h),
              "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}
    for name, (n, k) in shapes.items():
        assert n % 32 == 0 and k % 2 == 0 and (n * k) % 64 == 0 and k >= 64, (name, n, k)


def test_engine_rejects_a_16_bit_image(tiny_engine, report_prompt):
    with pytest.raises(InvalidRequest, match="image must be 8-bit"):
        tiny_engine.generate([GenerationRequest(np.zeros((8, 8), np.uint16), report_prompt)])


def test_bad_settings_are_rejected():
    with pytest.raises(InvalidRequest, match=r"top_p must be in \(0, 1\], got 0"):
        GenerationSettings(top_p=0)
    with pytest.raises(InvalidRequest, match="quantization '2bit' is not supported"):
        ModelConfig(model="x", quantization="2bit")


# -- the static-cache decode ------------------------------------------------------------------------------


def _batch3(images, report_prompt, question_prompt, settings):
    return [GenerationRequest(images[0], report_prompt, settings),
            GenerationRequest(images[1], question_prompt, settings),  # shorter prompt: left-padded
            GenerationRequest(images[2], report_prompt, settings)]


def test_static_decode_gives_the_eager_greedy_tokens_at_batch_1_and_3(tiny_engine, tiny_static_engine, images,
                                                                      report_prompt, question_prompt):
    assert tiny_static_engine.decode_path == "static" and tiny_engine.decode_path == "eager"  # no compile on CPU
    one = [GenerationRequest(images[0], report_prompt, GREEDY)]
    assert tiny_static_engine.generate(one)[0].token_ids == tiny_engine.generate(one)[0].token_ids
    three = _batch3(images, report_prompt, question_prompt, GREEDY)
    eager, static = tiny_engine.generate(three), tiny_static_engine.generate(three)
    assert [r.token_ids for r in static] == [r.token_ids for r in eager]
    assert [r.text for r in static] == [r.text for r in eager]
    # same result shape: token counts, finish reasons, identity, timings with the prefill/decode split
    for s, e in zip(static, eager):
        assert (s.new_tokens, s.prompt_tokens, s.finish_reason) == (e.new_tokens, e.prompt_tokens, e.finish_reason)
        # the identities differ only in the decode path (part of the identity: drafts are not reused across it)
        assert {**s.model, "decode": "-"} == {**e.model, "decode": "-"} and (s.model["decode"], e.model["decode"]) \
            == ("static", "eager")
        assert set(s.timings) == set(e.timings) >= {"preprocess_ms", "prefill_ms", "decode_ms", "queue_ms"}


def test_static_decode_samples_the_eager_tokens_with_the_same_seeds(tiny_engine, tiny_static_engine, images,
                                                                    report_prompt, question_prompt):
    s = GenerationSettings(temperature=1.0, top_p=0.95, max_new_tokens=10, seed=11)
    one = [GenerationRequest(images[0], report_prompt, s)]
    assert tiny_static_engine.generate(one)[0].token_ids == tiny_engine.generate(one)[0].token_ids
    mixed = _batch3(images, report_prompt, question_prompt, s)
    mixed[1] = GenerationRequest(images[1], question_prompt, GREEDY)
    mixed[2] = GenerationRequest(images[2], report_prompt, GenerationSettings(temperature=0.7, top_p=0.8, seed=3,
                                                                              max_new_tokens=9))
    eager, static = tiny_engine.generate(mixed), tiny_static_engine.generate(mixed)
    assert [r.token_ids for r in static] == [r.token_ids for r in eager]
    assert static[0].token_ids == tiny_static_engine.generate(one)[0].token_ids  # independent of the batch


def test_static_cache_is_reset_between_batches_of_other_shapes(tiny_static_engine, images, report_prompt,
                                                               question_prompt):
    three = _batch3(images, report_prompt, question_prompt, GREEDY)
    first = [r.token_ids for r in tiny_static_engine.generate(three)]
    tiny_static_engine.generate(three[1:2])                                      # another (B, C): a new cache
    tiny_static_engine.generate([GenerationRequest(images[1], report_prompt, GREEDY)] * 3)  # same (B, C), reused
    assert [r.token_ids for r in tiny_static_engine.generate(three)] == first


def test_both_decodes_stop_on_eos_row_by_row(tiny_engine, tiny_static_engine, images, report_prompt,
                                            question_prompt):
    three = _batch3(images, report_prompt, question_prompt, GREEDY)
    # past the real EOS too: once EOS is another token, a row that stopped at the real one goes on
    free = tiny_engine.generate(_batch3(images, report_prompt, question_prompt,
                                        GenerationSettings(temperature=0.0, max_new_tokens=12, ignore_eos=True)))
    # Make a token the row-0 greedy text produces at step 3 the EOS: rows then stop at different steps.
    eos = free[0].token_ids[3]
    expected = []
    for r in free:
        ids = list(r.token_ids)
        expected.append(tuple(ids[:ids.index(eos)]) if eos in ids else r.token_ids)
    for base in (tiny_engine, tiny_static_engine):
        engine = Engine(base.model, base.tokenizer, identity=base.identity, image_size=base.image_size,
                        image_mean=base.image_mean, image_std=base.image_std, eos_token_id=eos, decode=base.decode)
        got = engine.generate(three)
        assert [r.token_ids for r in got] == expected
        assert got[0].finish_reason == "eos" and got[0].new_tokens == free[0].token_ids.index(eos)
        assert [r.finish_reason for r in got] == ["eos" if eos in r.token_ids else "length" for r in free]


def test_batched_sampling_equals_multinomial_per_row_after_transformers_warpers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    )

    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(1)) * 3
    settings = [GenerationSettings(temperature=0.4, top_p=0.8), GenerationSettings(temperature=0.4, top_p=0.8),
                GenerationSettings(temperature=1.3, top_p=0.95, top_k=0), GenerationSettings(temperature=0.2, top_k=5)]
    drawn = sample_batch(logits, settings, [torch.Generator().manual_seed(10 + i) for i in range(4)])
    assert drawn.shape == (4,) and drawn.dtype == torch.long
    for i, s in enumerate(settings):
        warpers = [TemperatureLogitsWarper(s.temperature)]
        warpers += [TopKLogitsWarper(s.top_k)] if s.top_k else []
        warpers += [TopPLogitsWarper(s.top_p)] if s.top_p < 1 else []
        scores = logits[i:i + 1].clone()
        for warper in warpers:
            scores = warper(None, scores)
        expected = torch.multinomial(scores[0].softmax(-1), 1, generator=torch.Generator().manual_seed(10 + i))
        assert int(drawn[i]) == int(expected)


def test_decode_settings_errors_are_clear(tiny_engine):
    with pytest.raises(InvalidRequest, match="decode 'beam' is not supported; use one of eager, static"):
        ModelConfig(model="x", decode="beam")
    with pytest.raises(InvalidRequest, match="compile=True needs decode='static'"):
        ModelConfig(model="x", compile=True)
    with pytest.raises(InvalidRequest, match="compile must be true, false or unset .* got 'yes'"):
        ModelConfig(model="x", decode="static", compile="yes")
    e = tiny_engine
    with pytest.raises(InvalidRequest, match="compile needs decode 'static'"):
        Engine(e.model, e.tokenizer, identity=e.identity, image_size=e.image_size, image_mean=e.image_mean,
               image_std=e.image_std, eos_token_id=2, compile=True)


# -- bitsandbytes ---------------------------------------------------------------------------------------


def _need_bitsandbytes() -> None:
    """Skip on a developer machine without bitsandbytes; fail in CI (env CI set), where it must be installed."""
    try:
        with warnings.catch_warnings():  # its import warns about torch.jit (as pytest.importorskip hides)
            warnings.simplefilter("ignore")
            import bitsandbytes  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("bitsandbytes is missing in CI (env CI is set); install it: pip install 'bitsandbytes>=0.45'")
        pytest.skip("bitsandbytes is not installed")


def _assert_bnb_fields(qc, quantization: str) -> None:
    skip = set(qc.llm_int8_skip_modules)
    assert {"vision_tower", "multi_modal_projector", "lm_head"} <= skip and skip <= set(SKIP_QUANTIZATION)
    if quantization == "4bit":
        assert qc.load_in_4bit and not qc.load_in_8bit
        assert qc.bnb_4bit_quant_type == "nf4" and qc.bnb_4bit_use_double_quant is True
        assert qc.bnb_4bit_compute_dtype == torch.bfloat16  # pinned, whatever the model dtype (float32 here)
    else:
        assert qc.load_in_8bit and not qc.load_in_4bit


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_bitsandbytes_config_fields(quantization):
    _need_bitsandbytes()
    _assert_bnb_fields(quantization_config(quantization), quantization)
    assert quantization_config("none") is None


def test_missing_bitsandbytes_says_what_to_install(tiny_model_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    with pytest.raises(ModelLoadError, match=r"4bit quantization needs bitsandbytes: `pip install 'bitsandbytes"):
        load(ModelConfig(model=str(tiny_model_dir), device="cpu", quantization="4bit"))


def test_an_unpinned_local_model_reports_its_content_revision(tiny_engine):
    assert tiny_engine.identity.revision.startswith("local-")
