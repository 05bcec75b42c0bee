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
