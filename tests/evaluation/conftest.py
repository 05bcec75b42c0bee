"""Fixtures for the evaluation tests: the fixture data folder and a scripted stand-in model.

The scripted reader is a hand-written fake of the model (the component under test is the
harness): it recognises each fixture image by its constant pixel value (case i has value 10*i),
so a test also proves the right image reached the right request.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"

# Reports per image value (a list: one per repeat, cycled). Labels they should yield are in
# test_harness.py next to the hand computation.
REPORTS: dict[int, list[str]] = {
    10: ["There is a large right pleural effusion. There is no pneumothorax. There is cardiomegaly."],
    20: ["There is a small left pleural effusion. Possible pneumothorax."],
    30: ["There is no pleural effusion. There is a right pneumothorax."],
    40: ["There is a small right pleural effusion. There is no pneumothorax."],
    50: ["There is no pleural effusion. There is no pneumothorax."],
    60: ["No acute cardiopulmonary process."],
}
# P(Yes) per image value and finding (the rest 0.2)
SCORES: dict[int, dict[str, float]] = {
    10: {"pleural_effusion": 0.9, "cardiomegaly": 0.7, "pneumothorax": 0.05},
    20: {"pleural_effusion": 0.4, "pneumothorax": 0.5},
    30: {"pleural_effusion": 0.3, "pneumothorax": 0.95},
    40: {"pleural_effusion": 0.6, "pneumothorax": 0.05},
    50: {"pleural_effusion": 0.5, "pneumothorax": 0.05},
    60: {"pleural_effusion": 0.1, "cardiomegaly": 0.8, "pneumothorax": 0.05},
}


class ScriptedReader:
    """Fixed reports and probabilities per image; counts every call; can stop like an interrupted run."""

    identity = {"name": "scripted", "revision": "test", "dtype": "none", "quantization": "none"}

    def __init__(self, reports=None, scores=None, stop_after: int | None = None, cut: frozenset = frozenset()):
        self.cut = cut                        # image values whose report "stopped at the token cap"
        self.reports = reports or REPORTS
        self.scores = scores or SCORES
        self.stop_after = stop_after
        self.generated: list[tuple] = []      # (case_id, prompt key, temperature, top_p, repeat, seed)
        self.scored: list[int] = []           # image values scored
        self.prompts_seen: list = []
        self.questions_seen: list[dict] = []  # the question prompts of each score() call

    def _value(self, image: np.ndarray) -> int:
        assert image.dtype == np.uint8 and image.ndim == 2, (image.dtype, image.shape)
        return int(image[0, 0])

    def generate(self, requests):
        out = []
        from evaluation import Reading

        for r in requests:
            if self.stop_after is not None and len(self.generated) >= self.stop_after:
                raise KeyboardInterrupt("scripted interruption")
            texts = self.reports[self._value(r.image)]
            self.generated.append((r.case_id, r.prompt.key, r.sampling.temperature, r.sampling.top_p, r.repeat,
                                   r.sampling.seed))
            self.prompts_seen.append(r.prompt)
            out.append(Reading(text=texts[r.repeat % len(texts)], new_tokens=7,
                               finish_reason="length" if self._value(r.image) in self.cut else "eos"))
        return out

    def score(self, image, prompts):
        value = self._value(image)
        self.scored.append(value)
        self.questions_seen.append(dict(prompts))
        assert all(p.key == "finding_question.v1" for p in prompts.values())
        return {name: self.scores[value].get(name, 0.2) for name in prompts}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture
def scripted() -> ScriptedReader:
    return ScriptedReader()
