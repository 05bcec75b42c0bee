"""Value types of the model runtime: configuration, requests, results, identity."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from model_runtime.errors import InvalidRequest

Quantization = Literal["none", "8bit", "4bit", "int4"]
QUANTIZATIONS: tuple[str, ...] = ("none", "8bit", "4bit", "int4")
# torchao int4 weight-only group sizes (input channels sharing one scale and zero point); CUDA's tinygemm
# kernel takes all four, the CPU kernel 32, 64 and 128.
INT4_GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)
Decode = Literal["eager", "static"]
DECODES: tuple[str, ...] = ("eager", "static")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")

# The image's place in `prompt_token_ids`, as in the reference (LLaVA's IMAGE_TOKEN_INDEX).
IMAGE_SENTINEL = -200


@runtime_checkable
class PromptLike(Protocol):
    """What the runtime needs of a prompt (`prompts.Prompt` fits): the user text holds `<image>` once."""

    id: str
    version: str
    system: str
    user: str


@dataclass(frozen=True)
class ModelConfig:
    """Where the weights are and how to run them.

    Parameters
    ----------
    model : str
        A local directory (published ECOFRI layout, or native layout written by ``cxr-cds model convert``)
        or a hub id such as ``ECOFRI/CXR-LLAVA-v2``.
    revision : str, optional
        Hub revision (commit) to pin; recorded in the model identity.
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    dtype : str, optional
        ``float32``, ``bfloat16`` or ``float16``; default bfloat16 on CUDA, float32 on CPU.
    quantization : {"none", "8bit", "4bit", "int4"}, optional
        Weight quantization of the language model's Linear layers (the vision tower, the projector and
        ``lm_head`` stay unquantized): ``8bit`` (bitsandbytes LLM.int8), ``4bit`` (bitsandbytes NF4, the
        smallest memory on the widest hardware), ``int4`` (torchao int4 weight-only, grouped asymmetric:
        tinygemm kernels on CUDA, which decode faster than bf16 with the static cache and compile; the
        CPU kernel on CPU). Default 4bit on CUDA, none on CPU.
    int4_group_size : int, optional
        ``int4`` only: input channels per scale/zero point, one of 32, 64, 128, 256 (CPU: up to 128);
        smaller is closer to the unquantized model and a little slower. Default: the largest of 128, 64,
        32 that divides the input size of every quantized layer (128 for CXR-LLAVA-v2; 32 for the tiny model).
    local_files_only : bool
        For a hub id: use only what is already in the local cache (no network).
    cache_dir : str, optional
        Hub cache directory.
    attn_implementation : str, optional
        Passed to transformers (``"sdpa"``, ``"eager"``); default: transformers' choice.
    decode : {"eager", "static"}
        Decode backend: ``eager`` (a growing DynamicCache, one eager forward per token) or ``static`` (a
        StaticCache sized to the batch; with ``compile``, each decode step runs through torch.compile).
        Both give the same tokens.
    compile : bool, optional
        torch.compile the decode step (``decode="static"`` only). Default: on for ``static`` on CUDA
        (unless the quantization backend says it cannot be compiled), off elsewhere.
    """

    model: str
    revision: str | None = None
    device: str = "auto"
    dtype: str | None = None
    quantization: Quantization | None = None
    local_files_only: bool = False
    cache_dir: str | None = None
    attn_implementation: str | None = None
    decode: Decode = "eager"
    compile: bool | None = None
    int4_group_size: int | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise InvalidRequest("ModelConfig.model is empty: give a local checkpoint directory or a hub id")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InvalidRequest(f"dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise InvalidRequest(
                f"quantization {self.quantization!r} is not supported; use one of {', '.join(QUANTIZATIONS)}"
            )
        if self.decode not in DECODES:
            raise InvalidRequest(f"decode {self.decode!r} is not supported; use one of {', '.join(DECODES)}")
        if self.int4_group_size is not None:
            if self.int4_group_size not in INT4_GROUP_SIZES:
                raise InvalidRequest(f"int4_group_size {self.int4_group_size!r} is not supported; use one of "
                                     f"{', '.join(map(str, INT4_GROUP_SIZES))} or leave it unset")
            if self.quantization != "int4":
                raise InvalidRequest(f"int4_group_size is set but quantization is {self.quantization!r}; "
                                     "it applies to quantization 'int4' only")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise InvalidRequest(f"compile must be true, false or unset (None), got {self.compile!r}")
        if self.compile and self.decode != "static":
            raise InvalidRequest(
                "compile=True needs decode='static': the eager decode's cache grows every step, so there are "
                "no fixed shapes to compile; set decode='static' or leave compile unset"
            )


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings. ``temperature <= 0.001`` means greedy (as in the original).

    ``max_new_tokens`` caps the original's ``min(512, 2048 - prompt_length - 1)``; it never raises it.
    ``ignore_eos`` keeps decoding past EOS (benchmarks only: a fixed number of new tokens).
    """

    temperature: float = 0.2
    top_p: float = 0.8
    top_k: int = 50
    max_new_tokens: int | None = None
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise InvalidRequest(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InvalidRequest(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.001


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    """One image and one prompt. ``image``: (H, W) uint8 grayscale, MONOCHROME2 (0 = black)."""

    image: np.ndarray
    prompt: PromptLike
    settings: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass(frozen=True)
class ModelIdentity:
    """What produced an output: travels into FHIR Device/Provenance and card sources, and keys stored drafts.

    ``kernel`` names the matmul implementation of the quantized layers (``torch`` unquantized,
    ``bitsandbytes-int8``, ``bitsandbytes-nf4``, ``torchao-int4-g128-tinygemm`` on CUDA,
    ``torchao-int4-g32-cpu``...); ``decode`` the decode path (``eager``, ``static``, ``static+compile``,
    ``static+cudagraphs``; the Engine sets it). Outputs of different kernels or decode paths can differ
    in their last bits, so a draft made by one is never reused for another.
    """

    name: str
    revision: str | None
    dtype: str
    quantization: str
    kernel: str = "torch"
    decode: str = "eager"

    def for_prompt(self, prompt: PromptLike) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "kernel": self.kernel,
            "decode": self.decode,
            "prompt_id": prompt.id,
            "prompt_version": prompt.version,
        }


@dataclass(frozen=True)
class GenerationResult:
    """A generated text with its token ids, timings (ms) and the identity of model and prompt.

    ``prompt_token_ids`` holds the image as one ``-200`` sentinel (as in the reference);
    ``prompt_tokens`` counts the prompt as the model saw it (image tokens expanded).
    """

    text: str
    token_ids: tuple[int, ...]
    prompt_token_ids: tuple[int, ...]
    timings: dict[str, float]
    prompt_tokens: int
    new_tokens: int
    model: dict[str, Any]
    finish_reason: Literal["eos", "length"] = "eos"

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "prompt_token_ids": list(self.prompt_token_ids),
            "timings": dict(self.timings),
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "finish_reason": self.finish_reason,
            "model": dict(self.model),
        }
