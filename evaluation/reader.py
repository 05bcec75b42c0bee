"""The harness's view of a model: a small protocol, and the adapter onto model_runtime's backends.

Tests pass a scripted stand-in with the same two methods; the real adapter batches several images
into one ``ModelBackend.generate`` call (``hf``: the in-process engine; ``vllm``: a vLLM server).
Nothing here imports torch until a real model is opened.
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
    """What came back: the text, optionally the generated token count, and why generation stopped.

    ``finish_reason`` is ``"length"`` when the text stopped at the token cap (an unfinished report).
    """

    text: str
    new_tokens: int | None = None
    finish_reason: str | None = None


class Reader(Protocol):
    """A model as the harness sees it."""

    identity: Mapping[str, Any]          # {"name", "revision", "dtype", "quantization"}

    def generate(self, requests: Sequence[ReadRequest]) -> list[Reading]:
        """One Reading per request, in order."""

    def score(self, image: np.ndarray, prompts: Mapping[str, Any]) -> dict[str, float]:
        """P(Yes) per finding for the yes/no question prompts of one image."""


class BackendReader:
    """A ``model_runtime.ModelBackend`` (or an ``Engine``) as a Reader: ``batch_size`` requests per
    ``generate`` call."""

    def __init__(self, engine, batch_size: int = 8):
        self.engine = engine
        self.batch_size = max(1, int(batch_size))
        ident = engine.identity
        self.identity = {"name": ident.name, "revision": ident.revision, "dtype": ident.dtype,
                         "quantization": ident.quantization}
        # which backend generated (kernel "vllm-0.32.0", decode "vllm:<served model>" for the vllm backend)
        for extra in ("kernel", "decode"):
            if getattr(ident, extra, None) is not None:
                self.identity[extra] = getattr(ident, extra)

    def close(self) -> None:
        """Release the backend (HTTP connections of the vllm backend)."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

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
            out.extend(Reading(text=res.text, new_tokens=res.new_tokens, finish_reason=res.finish_reason)
                       for res in results)
        return out

    def score(self, image: np.ndarray, prompts: Mapping[str, Any]) -> dict[str, float]:
        names = list(prompts)
        probs = self.engine.score_yes_no(image, [prompts[n] for n in names])
        return {n: float(p) for n, p in zip(names, probs)}


EngineReader = BackendReader  # the name before the backend interface


def open_reader(model: str, *, revision: str | None = None, device: str = "auto", dtype: str | None = None,
                quantization: str | None = None, batch_size: int = 8, backend: str = "hf",
                vllm_url: str | None = None) -> BackendReader:
    """Open a model backend on a checkpoint (local directory or hub id) and wrap it as a Reader.

    Parameters
    ----------
    backend : {"hf", "vllm"}
        ``vllm`` needs ``vllm_url``: the server serving this checkpoint's exported decoder.

    Raises
    ------
    model_runtime.ModelLoadError
        The checkpoint cannot be found or loaded (the message says what to provide).
    model_runtime.ModelRuntimeError
        ``vllm``: the server cannot be reached or serves another model (typed, with the fix).
    """
    from model_runtime import ModelConfig, open_backend

    started = time.perf_counter()
    engine = open_backend(backend, ModelConfig(model=model, revision=revision, device=device, dtype=dtype,
                                               quantization=quantization), vllm_url=vllm_url)
    reader = BackendReader(engine, batch_size=batch_size)
    reader.load_seconds = time.perf_counter() - started
    return reader
