"""The harness's view of a model: a small protocol, and the adapter onto model_runtime's Engine.

Tests pass a scripted stand-in with the same two methods; the real adapter batches several images
into one ``Engine.generate`` call. Nothing here imports torch until a real model is opened.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one generation (``temperature <= 0.001`` is greedy)."""

    temperature: float
    top_p: float
    seed: int | None = None
    max_new_tokens: int | None = None


@dataclass(frozen=True, eq=False)
class ReadRequest:
    """One generation: ``image`` (H, W) uint8 MONOCHROME2, a prompt (``prompts.Prompt``), its sampling.

    ``case_id`` and ``repeat`` are bookkeeping; a real model ignores them.
    """

    case_id: str
    repeat: int
    image: np.ndarray
    prompt: Any
    sampling: Sampling


@dataclass(frozen=True)
class Reading:
    """What came back: the text, and optionally the generated token count."""

    text: str
    new_tokens: int | None = None


class Reader(Protocol):
    """A model as the harness sees it."""

    identity: Mapping[str, Any]          # {"name", "revision", "dtype", "quantization"}

    def generate(self, requests: Sequence[ReadRequest]) -> list[Reading]:
        """One Reading per request, in order."""

    def score(self, image: np.ndarray, prompts: Mapping[str, Any]) -> dict[str, float]:
        """P(Yes) per finding for the yes/no question prompts of one image."""


class EngineReader:
    """``model_runtime.Engine`` as a Reader: ``batch_size`` requests per ``Engine.generate`` call."""

    def __init__(self, engine, batch_size: int = 8):
        self.engine = engine
        self.batch_size = max(1, int(batch_size))
        ident = engine.identity
        self.identity = {"name": ident.name, "revision": ident.revision, "dtype": ident.dtype,
                         "quantization": ident.quantization}

    def generate(self, requests: Sequence[ReadRequest]) -> list[Reading]:
        from model_runtime import GenerationRequest, GenerationSettings

        out: list[Reading] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            batch = [GenerationRequest(image=r.image, prompt=r.prompt,
                                       settings=GenerationSettings(temperature=r.sampling.temperature,
                                                                   top_p=r.sampling.top_p, seed=r.sampling.seed,
                                                                   max_new_tokens=r.sampling.max_new_tokens))
                     for r in chunk]
            results = self.engine.generate(batch)
            out.extend(Reading(text=res.text, new_tokens=res.new_tokens) for res in results)
        return out

    def score(self, image: np.ndarray, prompts: Mapping[str, Any]) -> dict[str, float]:
        names = list(prompts)
        probs = self.engine.score_yes_no(image, [prompts[n] for n in names])
        return {n: float(p) for n, p in zip(names, probs)}


def open_reader(model: str, *, revision: str | None = None, device: str = "auto", dtype: str | None = None,
                quantization: str | None = None, batch_size: int = 8) -> EngineReader:
    """Load a checkpoint (local directory or hub id) and wrap it as a Reader.

    Raises
    ------
    model_runtime.ModelLoadError
        The checkpoint cannot be found or loaded (the message says what to provide).
    """
    from model_runtime import ModelConfig, load

    started = time.perf_counter()
    engine = load(ModelConfig(model=model, revision=revision, device=device, dtype=dtype,
                              quantization=quantization))
    reader = EngineReader(engine, batch_size=batch_size)
    reader.load_seconds = time.perf_counter() - started
    return reader
