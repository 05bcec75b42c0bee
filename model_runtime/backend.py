"""One model-backend interface for the service, the CLI and the evaluation harness.

Two backends satisfy `ModelBackend`:

- ``hf`` (`HFBackend`): today's in-process transformers `Engine`, the exact reference (greedy tokens
  equal the authors' code). The default.
- ``vllm`` (`model_runtime.vllm_backend.VllmBackend`): our process runs the vision tower, the
  projector and the token embeddings and sends the spliced input sequence, as embeddings, to a stock
  vLLM OpenAI server that serves the decoder (``cxr-cds model export-decoder``).

`open_backend(kind, config, ...)` is the one factory: it does the I/O (loads weights, asks the
server what it serves) and hands ready parts to the constructors. The `InferenceWorker` takes any
backend.
"""
from __future__ import annotations

from typing import Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from model_runtime.errors import InvalidRequest
from model_runtime.types import GenerationRequest, GenerationResult, ModelConfig, ModelIdentity, PromptLike

BackendKind = Literal["hf", "vllm"]
BACKENDS: tuple[str, ...] = ("hf", "vllm")


@runtime_checkable
class ModelBackend(Protocol):
    """What every caller needs of a model: generate, score yes/no questions, say what it is.

    Errors are `model_runtime.ModelRuntimeError` subclasses: `InvalidRequest` for a request the model
    cannot take (from `validate`, before queueing), `OutOfMemory`, and for a served backend
    `BackendUnavailable`, `BackendTimeout` (both retryable), `BackendResponseError` (``.status``,
    ``.retryable``), `HiddenSizeMismatch` and `PayloadTooLarge`.
    """

    @property
    def identity(self) -> ModelIdentity:
        """Name, revision, dtype, quantization, kernel and decode path of what generates."""

    def validate(self, request: GenerationRequest) -> None:
        """Raise InvalidRequest for a request the model cannot take (checked before it is queued)."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One GenerationResult per request, in order (greedy: the same tokens at any batch size)."""

    def score_yes_no(self, image: np.ndarray, prompts: Sequence[PromptLike]) -> list[float]:
        """P("Yes") / (P("Yes") + P("No")) of the first answer token, one per prompt, on one image."""

    def close(self) -> None:
        """Release what the backend holds (HTTP connections; the weights go with the object)."""


class HFBackend:
    """The in-process transformers `Engine` as a `ModelBackend` (its methods, plus `close`).

    Parameters
    ----------
    engine : Engine
        A loaded engine (`model_runtime.load`); available as ``.engine`` for engine-only calls
        (``prefill_logits``, ``warm_up``).
    """

    kind = "hf"

    def __init__(self, engine):
        self.engine = engine

    @property
    def identity(self) -> ModelIdentity:
        return self.engine.identity

    def validate(self, request: GenerationRequest) -> None:
        self.engine.validate(request)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return self.engine.generate(requests)

    def score_yes_no(self, image: np.ndarray, prompts: Sequence[PromptLike]) -> list[float]:
        return self.engine.score_yes_no(image, prompts)

    def close(self) -> None:
        """Nothing to release: the weights are freed with the engine."""


def open_backend(kind: str, config: ModelConfig, *, vllm_url: str | None = None, session=None,
                 timeout_s: float = 120.0, max_payload_bytes: int = 256 << 20,
                 max_concurrency: int = 64, served_model: str | None = None) -> ModelBackend:
    """Open a model backend: load the weights (``hf``: all; ``vllm``: the encoder side) and check the server.

    Parameters
    ----------
    kind : {"hf", "vllm"}
    config : ModelConfig
        The published (or converted) CXR-LLAVA checkpoint. For ``vllm`` the same checkpoint whose decoder
        the server serves (``cxr-cds model export-decoder``).
    vllm_url : str, optional
        ``vllm`` only (required): the server's base URL, e.g. ``http://vllm:8000``.
    session : requests.Session, optional
        ``vllm`` only: the HTTP session to use (default: a new one, pooled for ``max_concurrency``).
    timeout_s : float
        ``vllm`` only: seconds to wait for each answer (a whole completion) before `BackendTimeout`.
    max_payload_bytes : int
        ``vllm`` only: largest request body; a larger one raises `PayloadTooLarge` before sending.
    max_concurrency : int
        ``vllm`` only: requests in flight to the server at most (a batch's requests go concurrently).
    served_model : str, optional
        ``vllm`` only: the served model id when the server serves several (default: the only one).

    Returns
    -------
    ModelBackend

    Raises
    ------
    InvalidRequest
        Unknown kind, or ``vllm`` without a URL.
    ModelLoadError
        The checkpoint cannot be loaded.
    BackendUnavailable, BackendTimeout, BackendResponseError
        ``vllm``: the server cannot be reached or does not answer as a vLLM OpenAI server.
    """
    if kind not in BACKENDS:
        raise InvalidRequest(f"backend {kind!r} is not supported; use one of {', '.join(BACKENDS)}")
    if kind == "hf":
        if vllm_url:
            raise InvalidRequest("a vLLM URL was given with backend 'hf'; choose backend 'vllm' or drop the URL")
        from model_runtime.loader import load

        return HFBackend(load(config))
    if not vllm_url:
        raise InvalidRequest("backend 'vllm' needs the vLLM server's URL (e.g. http://127.0.0.1:8000)")
    from model_runtime.vllm_backend import open_vllm

    return open_vllm(config, vllm_url, session=session, timeout_s=timeout_s, max_payload_bytes=max_payload_bytes,
                     max_concurrency=max_concurrency, served_model=served_model)
