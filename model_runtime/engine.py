"""The Engine: prompt + image -> tokens, on a ready VipLlavaForConditionalGeneration.

The whole inference path, top to bottom: validate -> preprocess + tokenise -> image features ->
splice them where ``<image>`` was -> left-padded batch -> prefill -> decode loop (token selection on
the device for the whole batch: `model_runtime.sampling`) -> stop on EOS or the length cap -> text.
`__init__` only stores ready parts; `loader.load` builds them.

Two decode backends (`model_runtime.decode`), the same loop and the same tokens: ``eager`` (a growing
DynamicCache) and ``static`` (a StaticCache; with ``compile``, each one-token step runs through
``torch.compile`` in mode "reduce-overhead", which records CUDA graphs on CUDA). `Engine.warm_up`
compiles the shapes a service uses before its first request.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from model_runtime.chat import ChatTokenizer, check_prompt
from model_runtime.checkpoint import NativeNames
from model_runtime.decode import (
    BATCH_BUCKETS, COMPILE_MODE, CONTEXT_LENGTH, MAX_COMPILED_SHAPES, STATIC_CACHE_MULTIPLE, EagerDecoder,
    StaticDecoder, allow_recompiles, padded_batch_size, static_cache_length,
)
from model_runtime.errors import InvalidRequest, OutOfMemory
from model_runtime.preprocess import check_image, preprocess
from model_runtime.sampling import generator, sample, sample_batch, select_tokens, warp
from model_runtime.types import (
    DECODES, IMAGE_SENTINEL, GenerationRequest, GenerationResult, GenerationSettings, ModelIdentity, PromptLike,
)

log = logging.getLogger(__name__)

__all__ = [
    "Engine", "PreparedBatch", "MAX_NEW_TOKENS", "CONTEXT_LENGTH", "STATIC_CACHE_MULTIPLE", "COMPILE_MODE",
    "MAX_COMPILED_SHAPES", "BATCH_BUCKETS", "WARM_UP_PROMPT", "sample", "sample_batch", "warp",
]

# The original's cap: max_new_tokens = min(512, CONTEXT_LENGTH - prompt_length - 1), with its constant
# 2048-token context (not the checkpoint's max_position_embeddings).
MAX_NEW_TOKENS = 512
# Settings of the rows that pad a compiled decode's batch up to its bucket (their outputs are dropped).
_PAD_SETTINGS = GenerationSettings(temperature=0.0)


@dataclass(frozen=True)
class _WarmUpPrompt:
    """The prompt `Engine.warm_up` generates with (its text does not matter, only the shapes)."""

    id: str = "warm-up"
    version: str = "0"
    system: str = ""
    user: str = "<image>\n"


WARM_UP_PROMPT = _WarmUpPrompt()


@dataclass
class PreparedBatch:
    """A left-padded batch ready for the language model (shapes: B rows, L positions, H hidden)."""

    inputs_embeds: torch.Tensor      # (B, L, H) text embeddings with the image features spliced in
    attention_mask: torch.Tensor     # (B, L) long, 0 on the left padding
    position_ids: torch.Tensor       # (B, L) long, each row counts 0.. from its first real token
    prompt_ids: list[list[int]]      # per row, the image as one IMAGE_SENTINEL
    prompt_lengths: list[int]        # per row, with the image tokens expanded
    preprocess_ms: float
    features_ms: float


class Engine:
    """Generation and scoring on a loaded CXR-LLAVA model. Build it with `model_runtime.load`.

    Parameters
    ----------
    model : VipLlavaForConditionalGeneration
        Ready on its device (possibly bitsandbytes-quantized).
    tokenizer : ChatTokenizer
    identity : ModelIdentity
    image_size : int
        Input side of the vision tower (512 for the real model).
    image_mean, image_std : float
        The checkpoint's scalar normalisation.
    eos_token_id : int
    decode : {"eager", "static"}
        Decode backend (module docstring); both give the same tokens.
    compile : bool
        With ``decode="static"``: run each decode step through ``torch.compile`` (COMPILE_MODE: CUDA
        graphs on CUDA). Batches then run padded up to a size in BATCH_BUCKETS.

    The identity's ``decode`` is set here from the decode path (``decode_path`` at construction).
    """

    def __init__(self, model, tokenizer: ChatTokenizer, *, identity: ModelIdentity, image_size: int,
                 image_mean: float, image_std: float, eos_token_id: int, decode: str = "eager",
                 compile: bool = False):
        if decode not in DECODES:
            raise InvalidRequest(f"decode {decode!r} is not supported; use one of {', '.join(DECODES)}")
        if compile and decode != "static":
            raise InvalidRequest("compile needs decode 'static' (the eager cache grows every step: no fixed shapes)")
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.image_mean = image_mean
        self.image_std = image_std
        self.eos_token_id = eos_token_id
        self.decode = decode
        vision_cfg = model.config.vision_config
        self.image_tokens = (vision_cfg.image_size // vision_cfg.patch_size) ** 2
        names = NativeNames.of(model)
        self._vision = model.get_submodule(names.vision)
        self._embed = model.get_input_embeddings()
        params = inspect.signature(model.forward).parameters
        # transformers 5.24 renamed past_key_values -> cache; older 5.x only knows past_key_values.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # Compiled lazily, on the first decode step of each distinct (B, C): static shapes, one CUDA graph each.
        self._compiled = None
        if compile:
            allow_recompiles(MAX_COMPILED_SHAPES)
            self._compiled = torch.compile(model.__call__, mode=COMPILE_MODE, fullgraph=False, dynamic=False)
        # what stored outputs are keyed by: the configured path (a compile failure's eager fallback is logged)
        self._identity = dataclasses.replace(identity, decode=self.decode_path)
        self._static: tuple[tuple[int, int], object] | None = None  # ((B, C), StaticCache) of the last batch
        self._lock = threading.Lock()  # one forward pass at a time on the device

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    @property
    def device(self) -> torch.device:
        return self._embed.weight.device

    @property
    def decode_path(self) -> str:
        """What the next generation runs: ``"eager"``, ``"static"``, ``"static+compile"`` (compiled, no CUDA
        graphs: CPU) or ``"static+cudagraphs"`` (compiled in mode "reduce-overhead" on CUDA)."""
        if self._compiled is None:
            return self.decode
        return "static+cudagraphs" if self.device.type == "cuda" else "static+compile"

    # -- inputs -----------------------------------------------------------------------------------
    def validate(self, request: GenerationRequest) -> None:
        """Raise InvalidRequest for a request the model cannot take (checked before it is queued)."""
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(request).__name__}")
        check_image(request.image)
        check_prompt(request.prompt)
        if not isinstance(request.settings, GenerationSettings):
            raise InvalidRequest(f"settings must be GenerationSettings, got {type(request.settings).__name__}")

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) float32 -> (B, N, H) projected image tokens in the text embedding dtype."""
        vision_dtype = next(self._vision.parameters()).dtype
        out = self.model.get_image_features(pixel_values.to(self.device, vision_dtype), -1)
        feats = getattr(out, "pooler_output", out)  # transformers >= 5.2x returns an output object
        return feats.to(self._embed.weight.dtype)

    def prepare(self, images: Sequence[np.ndarray], prompts: Sequence[PromptLike]) -> PreparedBatch:
        """Tokenise, preprocess, run the vision tower once per distinct image, splice, left-pad."""
        t0 = time.perf_counter()
        ids = [self.tokenizer.encode_prompt(p) for p in prompts]
        # One vision pass per distinct image object (score_yes_no passes the same image for every question).
        distinct: dict[int, int] = {}
        for im in images:
            distinct.setdefault(id(im), len(distinct))
        uniq = [None] * len(distinct)
        for im in images:
            uniq[distinct[id(im)]] = im
        pixels = preprocess(uniq, self.image_size, self.image_mean, self.image_std)  # (U, 1, S, S)
        t1 = time.perf_counter()
        with torch.inference_mode():
            feats = self._image_features(pixels)  # (U, N, H)
            rows = []
            for row_ids, im in zip(ids, images):
                cut = row_ids.index(IMAGE_SENTINEL)
                before = torch.tensor(row_ids[:cut], device=self.device)
                after = torch.tensor(row_ids[cut + 1:], device=self.device)
                rows.append(torch.cat([self._embed(before), feats[distinct[id(im)]], self._embed(after)]))
        self._sync()
        t2 = time.perf_counter()
        lengths = [r.shape[0] for r in rows]
        width = max(lengths)
        b, h = len(rows), rows[0].shape[1]
        embeds = torch.zeros((b, width, h), dtype=rows[0].dtype, device=self.device)
        mask = torch.zeros((b, width), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            embeds[i, width - r.shape[0]:] = r  # left padding: every row ends at the last column
            mask[i, width - r.shape[0]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return PreparedBatch(embeds, mask, positions, ids, lengths, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def new_dynamic_cache(self):
        """An empty DynamicCache for the text model (the eager decode's)."""
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config.get_text_config())
        except TypeError:
            return DynamicCache()

    def forward(self, **kwargs):
        """One eager forward of the whole model; ``cache=`` is passed under this transformers' name."""
        cache = kwargs.pop("cache", None)
        if cache is not None:
            kwargs[self._cache_kw] = cache
        return self.model(**kwargs)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def max_new_tokens(self, prompt_length: int, settings: GenerationSettings) -> int:
        """``min(512, 2048 - prompt_length - 1)`` as the original, lowered (never raised) by the settings."""
        cap = min(MAX_NEW_TOKENS, CONTEXT_LENGTH - prompt_length - 1)
        if settings.max_new_tokens is not None:
            cap = min(cap, settings.max_new_tokens)
        if cap < 1:
            raise InvalidRequest(
                f"the prompt is {prompt_length} tokens (image included); the original's {CONTEXT_LENGTH}-token "
                "context leaves no room to generate: shorten the prompt"
            )
        return cap

    # -- generation -------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for a batch of requests (left-padded; greedy output equals batch size 1).

        Runs the decode backend chosen at load (`decode_path`); eager and static give the same tokens.

        Parameters
        ----------
        requests : sequence of GenerationRequest
            Each with its own image, prompt and settings (settings may differ within a batch).

        Returns
        -------
        list of GenerationResult, in request order. Timings in ms: ``preprocess_ms``, ``prefill_ms``
        (vision tower + prompt prefill + first token), ``decode_ms``, ``queue_ms`` (0 here; the worker sets it).

        Raises
        ------
        InvalidRequest
            A request's image is not (H, W) uint8, its prompt lacks ``<image>``, or the prompt is too long.
        OutOfMemory
            The device ran out of memory for this batch.
        """
        requests = list(requests)
        if not requests:
            return []
        for r in requests:
            self.validate(r)
        with self._lock:
            try:
                return self._generate(requests)
            except torch.OutOfMemoryError as exc:
                self._static = None  # a smaller batch (the worker's retry) needs the static cache's memory
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise OutOfMemory(
                    f"out of device memory generating a batch of {len(requests)} on {self.device}; "
                    "use a smaller batch, 4bit quantization or a larger device"
                ) from exc

    def warm_up(self, batch_sizes: Iterable[int], cache_length: int = CONTEXT_LENGTH) -> dict[int, float]:
        """Compile (and on CUDA record the CUDA graphs of) the decode step for these batch sizes now.

        A compiled static decode compiles each (padded batch size, cache length) on first use (tens of
        seconds for the full model); a service calls this at start-up with the batch sizes its worker
        forms (1..max_batch), so the first clinician does not wait. Each distinct padded size
        (BATCH_BUCKETS) runs one short greedy generation on a blank image with a static cache of
        `cache_length` positions, the length every report request (up to 512 new tokens) uses.
        Without a compiled decode there is nothing to warm: returns ``{}``.

        Parameters
        ----------
        batch_sizes : iterable of int
            Batch sizes the service will run (e.g. ``range(1, worker.max_batch + 1)``).
        cache_length : int
            Static cache positions to warm (CONTEXT_LENGTH: where report requests land).

        Returns
        -------
        dict
            Padded batch size -> seconds its warm-up took.
        """
        sizes = sorted({padded_batch_size(int(b)) for b in batch_sizes if int(b) >= 1})
        if self._compiled is None or not sizes:
            return {}
        image = np.zeros((self.image_size, self.image_size), dtype=np.uint8)
        # 4 new tokens = 3 decode steps: CUDA graph trees warm up on the first, record on the second, replay after
        settings = GenerationSettings(temperature=0.0, max_new_tokens=4, ignore_eos=True)
        took: dict[int, float] = {}
        for size in sizes:
            t0 = time.perf_counter()
            with self._lock:
                self._generate([GenerationRequest(image, WARM_UP_PROMPT, settings)] * size, cache_length=cache_length)
            took[size] = time.perf_counter() - t0
            log.info("decode warm-up: batch %d x %d cache positions in %.1f s (%s)", size, cache_length,
                     took[size], self.decode_path)
        return took

    def _generate(self, requests: list[GenerationRequest], cache_length: int | None = None) -> list[GenerationResult]:
        n_real = len(requests)
        if self._compiled is not None:
            # a compiled decode runs at a few batch sizes (one CUDA graph each): pad with copies of the
            # last request (same image object: no extra vision pass), finished from the start
            pad = requests[-1]
            requests = requests + [GenerationRequest(pad.image, pad.prompt, _PAD_SETTINGS)] * (
                padded_batch_size(n_real) - n_real)
        settings = [r.settings for r in requests]
        batch = self.prepare([r.image for r in requests], [r.prompt for r in requests])
        caps = [self.max_new_tokens(n, s) for n, s in zip(batch.prompt_lengths, settings)]
        gens = [None if s.greedy else generator(s.seed, self.device) for s in settings]
        b = len(requests)
        t0 = time.perf_counter()
        with torch.inference_mode():
            if self.decode == "static":
                length = cache_length or static_cache_length(batch.attention_mask.shape[1], max(caps[:n_real]))
                decoder = StaticDecoder(self, batch, length)
            else:
                decoder = EagerDecoder(self, batch)
            tokens = self._select(decoder.prefill(), settings, gens)  # (B,) long, on the device
            self._sync()
            t1 = time.perf_counter()
            generated: list[list[int]] = [[] for _ in range(b)]
            done = [i >= n_real for i in range(b)]  # padding rows never generate
            finish = ["length"] * b
            if n_real < b:
                done_rows = torch.tensor(done, device=self.device)[:, None]
            else:
                done_rows = None  # (B, 1) bool on the device once a row has finished
            while True:
                newly_done = False
                for i, tok in enumerate(tokens.tolist()):  # the one host sync per step
                    if done[i]:
                        continue
                    if tok == self.eos_token_id and not settings[i].ignore_eos:
                        done[i], finish[i], newly_done = True, "eos", True
                        continue
                    generated[i].append(tok)
                    if len(generated[i]) >= caps[i]:
                        done[i], newly_done = True, True
                if all(done):
                    break
                if newly_done:
                    done_rows = torch.tensor(done, device=self.device)[:, None]
                step = tokens[:, None]  # (B, 1); finished rows are fed EOS and their outputs ignored
                if done_rows is not None:
                    step = step.masked_fill(done_rows, self.eos_token_id)
                tokens = self._select(decoder.step(step), settings, gens)
            self._sync()
            t2 = time.perf_counter()
        results = []
        for i, r in enumerate(requests[:n_real]):
            timings = {"queue_ms": 0.0, "preprocess_ms": batch.preprocess_ms,
                       "prefill_ms": batch.features_ms + (t1 - t0) * 1e3, "decode_ms": (t2 - t1) * 1e3}
            results.append(GenerationResult(
                text=self.tokenizer.decode(generated[i]),
                token_ids=tuple(generated[i]),
                prompt_token_ids=tuple(batch.prompt_ids[i]),
                timings=timings,
                prompt_tokens=batch.prompt_lengths[i],
                new_tokens=len(generated[i]),
                model=self._identity.for_prompt(r.prompt),
                finish_reason=finish[i],
            ))
        return results

    def _select(self, logits: torch.Tensor, settings: list[GenerationSettings],
                gens: list[torch.Generator | None]) -> torch.Tensor:
        """(B, V) logits -> (B,) token ids on the device (`sampling.select_tokens`)."""
        return select_tokens(logits, settings, gens, self.tokenizer.vocab_size)

    def static_cache(self, batch_size: int, length: int):
        """A reset StaticCache for (batch_size, length): the previous one when it has that shape.

        Reusing it keeps the cache tensors at the same addresses, so CUDA graphs recorded for that shape replay.
        """
        key = (batch_size, length)
        if self._static is not None and self._static[0] == key:
            cache = self._static[1]
            cache.reset()
            return cache
        from transformers import StaticCache

        self._static = None  # free the old one first
        text_config = self.model.config.get_text_config()
        params = inspect.signature(StaticCache.__init__).parameters
        if "max_batch_size" in params:  # transformers 4.x: eager allocation
            cache = StaticCache(config=text_config, max_batch_size=batch_size, max_cache_len=length,
                                device=self.device, dtype=self._embed.weight.dtype)
        else:  # 5.x: allocated on the first update (the prefill), then marked static for dynamo
            cache = StaticCache(config=text_config, max_cache_len=length)
        self._static = (key, cache)
        return cache

    def decode_step(self, **kwargs):
        """One decode forward: compiled when asked; a compilation failure falls back to eager, once, logged."""
        if self._compiled is not None:
            cache = kwargs.pop("cache")
            kwargs[self._cache_kw] = cache
            try:
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are consumed
                return self._compiled(**kwargs)
            except torch._dynamo.exc.TorchDynamoException as exc:  # a failed compile never ran the step
                log.warning("torch.compile of the decode step failed (%s: %s); decoding without compile",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
                self._compiled = None
                kwargs["cache"] = kwargs.pop(self._cache_kw)
        return self.forward(**kwargs)

    # -- scoring ----------------------------------------------------------------------------------
    def score_yes_no(self, image: np.ndarray, prompts: Sequence[PromptLike]) -> list[float]:
        """P("Yes") / (P("Yes") + P("No")) for the first answer token of each yes/no question on one image.

        One vision pass and one batched prefill for all the questions; no sampling.

        Parameters
        ----------
        image : (H, W) uint8
        prompts : sequence of prompts with ``<image>`` (e.g. ``prompts.finding_questions().values()``)

        Returns
        -------
        list of float in [0, 1], one per prompt.

        Raises
        ------
        InvalidRequest
            Bad image or a prompt without ``<image>``.
        """
        prompts = list(prompts)
        if not prompts:
            return []
        check_image(image)
        for p in prompts:
            check_prompt(p)
        yes, no = self.tokenizer.answer_token_id("Yes"), self.tokenizer.answer_token_id("No")
        with self._lock, torch.inference_mode():
            batch = self.prepare([image] * len(prompts), prompts)
            out = self.forward(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)
            pair = out.logits[:, -1, [yes, no]].float()  # (Q, 2)
            return pair.softmax(dim=-1)[:, 0].tolist()

    def prefill_logits(self, request: GenerationRequest) -> torch.Tensor:
        """Logits of every prompt position, (T, V) float32 on CPU: for exactness checks."""
        self.validate(request)
        with self._lock, torch.inference_mode():
            batch = self.prepare([request.image], [request.prompt])
            out = self.forward(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False)
            return out.logits[0].float().cpu()
