"""Decode-path agreement: eager, static and compiled static decoding give the same greedy tokens.

On CPU (float32, tiny model) every run; on CUDA (`gpu` marker) bf16 and int4 each against their own
eager path, with the compiled path recording CUDA graphs.
"""
from __future__ import annotations

import pytest
import torch

from model_runtime import Engine, GenerationRequest, GenerationSettings, ModelConfig, load
from model_runtime.decode import BATCH_BUCKETS, padded_batch_size, static_cache_length

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=10)


def _one(images, report_prompt):
    return [GenerationRequest(images[0], report_prompt, GREEDY)]


def _longest_not_first(images, report_prompt, question_prompt):
    """Three rows, left-padded to the report prompt in row 1: rows 0 and 2 (short questions) are padded."""
    return [GenerationRequest(images[0], question_prompt, GREEDY),
            GenerationRequest(images[1], report_prompt, GREEDY),
            GenerationRequest(images[2], question_prompt, GREEDY)]


def _assert_same_tokens(engines: dict[str, Engine], requests) -> None:
    got = {name: [r.token_ids for r in e.generate(requests)] for name, e in engines.items()}
    reference = got.pop("eager")
    assert all(reference), "every row generated tokens"
    for name, tokens in got.items():
        assert tokens == reference, name


@pytest.fixture(scope="module")
def tiny_compiled_engine(tiny_model_dir):
    """Static cache + torch.compile of the decode step on CPU (inductor; no CUDA graphs here)."""
    return load(ModelConfig(model=str(tiny_model_dir), device="cpu", decode="static", compile=True))


def test_the_longest_prompt_is_not_row_0(tiny_engine, images, report_prompt, question_prompt):
    batch = tiny_engine.prepare([r.image for r in _longest_not_first(images, report_prompt, question_prompt)],
                                [r.prompt for r in _longest_not_first(images, report_prompt, question_prompt)])
    assert batch.prompt_lengths[1] > batch.prompt_lengths[0] == batch.prompt_lengths[2]
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[1].all()  # row 0 is left-padded


def test_decode_paths_and_identities(tiny_engine, tiny_static_engine, tiny_compiled_engine):
    assert [e.decode_path for e in (tiny_engine, tiny_static_engine, tiny_compiled_engine)] == [
        "eager", "static", "static+compile"]
    assert [e.identity.decode for e in (tiny_engine, tiny_static_engine, tiny_compiled_engine)] == [
        "eager", "static", "static+compile"]


@pytest.mark.slow
def test_eager_static_and_compiled_agree_at_batch_1_and_in_a_left_padded_batch(
        tiny_engine, tiny_static_engine, tiny_compiled_engine, images, report_prompt, question_prompt):
    engines = {"eager": tiny_engine, "static": tiny_static_engine, "compiled": tiny_compiled_engine}
    _assert_same_tokens(engines, _one(images, report_prompt))
    # 3 rows: the compiled decode runs them padded to 4 (BATCH_BUCKETS); the padding row is dropped
    three = _longest_not_first(images, report_prompt, question_prompt)
    _assert_same_tokens(engines, three)
    results = tiny_compiled_engine.generate(three)
    assert len(results) == 3 and [r.new_tokens for r in results] == [10, 10, 10]
    # and each row of the batch equals that request alone
    assert [r.token_ids for r in results] == [tiny_engine.generate([q])[0].token_ids for q in three]


@pytest.mark.slow
def test_warm_up_compiles_each_padded_batch_size_once(tiny_compiled_engine, tiny_engine, images, report_prompt):
    took = tiny_compiled_engine.warm_up(range(1, 4), cache_length=512)
    assert sorted(took) == [1, 2, 4] and all(t > 0 for t in took.values())
    assert tiny_engine.warm_up(range(1, 9)) == {}  # nothing compiled, nothing to warm
    # after the warm-up the engine still gives the eager tokens
    assert (tiny_compiled_engine.generate(_one(images, report_prompt))[0].token_ids
            == tiny_engine.generate(_one(images, report_prompt))[0].token_ids)


def test_batch_buckets_and_cache_lengths():
    assert [padded_batch_size(b) for b in (1, 2, 3, 5, 8, 9, 33, 64, 65, 130)] == [1, 2, 4, 8, 8, 16, 64, 64, 128, 192]
    assert BATCH_BUCKETS[0] == 1
    # report requests (>= 1024 image positions + prompt, 512 new tokens) share the 2048-position cache
    assert {static_cache_length(n, min(512, 2048 - n - 1)) for n in range(1121, 1900, 37)} == {2048}
    assert static_cache_length(1121, 128) == 1536


# -- on a GPU (skipped without CUDA) -----------------------------------------------------------------------

@pytest.fixture(scope="module", params=["none", "int4"])
def cuda_engines(request, tiny_model_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    q = request.param
    if q == "int4":
        pytest.importorskip("torchao")
    common = dict(model=str(tiny_model_dir), device="cuda", dtype="bfloat16", quantization=q)
    return {"eager": load(ModelConfig(**common)),
            "static": load(ModelConfig(**common, decode="static", compile=False)),
            "compiled": load(ModelConfig(**common, decode="static"))}  # compile on by default on CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_decode_paths_agree_with_their_own_eager_path(cuda_engines, images, report_prompt, question_prompt):
    assert cuda_engines["compiled"].decode_path == "static+cudagraphs"
    kernel = cuda_engines["eager"].identity.kernel
    assert kernel in ("torch", "torchao-int4-g64-tinygemm"), kernel
    _assert_same_tokens(cuda_engines, _one(images, report_prompt))
    _assert_same_tokens(cuda_engines, _longest_not_first(images, report_prompt, question_prompt))
    # replayed CUDA graphs (after warm-up) give the same tokens again
    cuda_engines["compiled"].warm_up([1, 3])
    _assert_same_tokens(cuda_engines, _longest_not_first(images, report_prompt, question_prompt))
