"""The Engine: prompt + image -> tokens, on a ready VipLlavaForConditionalGeneration.

The whole inference path, top to bottom: validate -> preprocess + tokenise -> image features ->
splice them where ``<image>`` was -> left-padded batch -> prefill -> decode loop (temperature ->
top-k -> top-p, greedy at temperature <= 0.001) -> stop on EOS or the length cap -> text.
`__init__` only stores ready parts; `loader.load` builds them.
"""
from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from model_runtime.chat import ChatTokenizer, check_prompt
from model_runtime.checkpoint import NativeNames
from model_runtime.errors import InvalidRequest, OutOfMemory
from model_runtime.preprocess import check_image, preprocess
from model_runtime.types import (
    IMAGE_SENTINEL, GenerationRequest, GenerationResult, GenerationSettings, ModelIdentity, PromptLike,
)

# The original's cap: max_new_tokens = min(512, max_positions - prompt_length - 1).
MAX_NEW_TOKENS = 512


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
    max_positions : int
        The language model's max_position_embeddings (for the new-token cap).
    eos_token_id : int
    """

    def __init__(self, model, tokenizer: ChatTokenizer, *, identity: ModelIdentity, image_size: int,
                 image_mean: float, image_std: float, max_positions: int, eos_token_id: int):
        self.model = model
        self.tokenizer = tokenizer
        self._identity = identity
        self.image_size = image_size
        self.image_mean = image_mean
        self.image_std = image_std
        self.max_positions = max_positions
        self.eos_token_id = eos_token_id
        vision_cfg = model.config.vision_config
        self.image_tokens = (vision_cfg.image_size // vision_cfg.patch_size) ** 2
        names = NativeNames.of(model)
        self._vision = model.get_submodule(names.vision)
        self._embed = model.get_input_embeddings()
        params = inspect.signature(model.forward).parameters
        # transformers 5.24 renamed past_key_values -> cache; older 5.x only knows past_key_values.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._lock = threading.Lock()  # one forward pass at a time on the device

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    @property
    def device(self) -> torch.device:
        return self._embed.weight.device

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

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config.get_text_config())
        except TypeError:
            return DynamicCache()

    def _forward(self, **kwargs):
        cache = kwargs.pop("cache", None)
        if cache is not None:
            kwargs[self._cache_kw] = cache
        return self.model(**kwargs)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def max_new_tokens(self, prompt_length: int, settings: GenerationSettings) -> int:
        """``min(512, max_positions - prompt_length - 1)``, lowered (never raised) by the settings."""
        cap = min(MAX_NEW_TOKENS, self.max_positions - prompt_length - 1)
        if settings.max_new_tokens is not None:
            cap = min(cap, settings.max_new_tokens)
        if cap < 1:
            raise InvalidRequest(
                f"the prompt is {prompt_length} tokens (image included); the model's max_position_embeddings "
                f"{self.max_positions} leaves no room to generate: shorten the prompt"
            )
        return cap

    # -- generation -------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for a batch of requests (left-padded; greedy output equals batch size 1).

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
        try:
            with self._lock:
                return self._generate(requests)
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(
                f"out of device memory generating a batch of {len(requests)} on {self.device}; "
                "use a smaller batch, 4bit quantization or a larger device"
            ) from exc

    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        settings = [r.settings for r in requests]
        batch = self.prepare([r.image for r in requests], [r.prompt for r in requests])
        caps = [self.max_new_tokens(n, s) for n, s in zip(batch.prompt_lengths, settings)]
        gens = [_generator(s.seed) for s in settings]
        b = len(requests)
        t0 = time.perf_counter()
        cache = self._new_cache()
        with torch.inference_mode():
            out = self._forward(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, cache=cache, use_cache=True, logits_to_keep=1)
            tokens = self._select(out.logits[:, -1, :], settings, gens)
            self._sync()
            t1 = time.perf_counter()
            generated: list[list[int]] = [[] for _ in range(b)]
            done = [False] * b
            finish = ["length"] * b
            mask, pos = batch.attention_mask, batch.position_ids[:, -1:]
            while True:
                for i, tok in enumerate(tokens):
                    if done[i]:
                        continue
                    if tok == self.eos_token_id and not settings[i].ignore_eos:
                        done[i], finish[i] = True, "eos"
                        continue
                    generated[i].append(tok)
                    if len(generated[i]) >= caps[i]:
                        done[i] = True
                if all(done):
                    break
                step = torch.tensor([[self.eos_token_id if done[i] else t] for i, t in enumerate(tokens)],
                                    device=self.device)  # (B, 1); finished rows are fed EOS and ignored
                mask = torch.cat([mask, mask.new_ones((b, 1))], dim=1)
                pos = pos + 1
                out = self._forward(input_ids=step, attention_mask=mask, position_ids=pos, cache=cache,
                                    use_cache=True, logits_to_keep=1)
                tokens = self._select(out.logits[:, -1, :], settings, gens)
            self._sync()
            t2 = time.perf_counter()
        results = []
        for i, r in enumerate(requests):
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
                gens: list[torch.Generator | None]) -> list[int]:
        """(B, V) logits -> one token id per row, each row with its own settings and generator."""
        vocab = self.tokenizer.vocab_size
        if logits.shape[-1] > vocab:  # rows beyond the tokenizer (none in the released checkpoint) never win
            logits = logits.clone()
            logits[:, vocab:] = float("-inf")
        greedy = logits.argmax(dim=-1).tolist()
        out = []
        for i, s in enumerate(settings):
            out.append(greedy[i] if s.greedy else sample(logits[i].float().cpu(), s, gens[i]))
        return out

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
            out = self._forward(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)
            pair = out.logits[:, -1, [yes, no]].float()  # (Q, 2)
            return pair.softmax(dim=-1)[:, 0].tolist()

    def prefill_logits(self, request: GenerationRequest) -> torch.Tensor:
        """Logits of every prompt position, (T, V) float32 on CPU: for exactness checks."""
        self.validate(request)
        with self._lock, torch.inference_mode():
            batch = self.prepare([request.image], [request.prompt])
            out = self._forward(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False)
            return out.logits[0].float().cpu()


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def sample(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> int:
    """One draw from (V,) float32 logits: temperature -> top-k -> top-p, as transformers' warpers in that order."""
    scores = logits / settings.temperature
    if settings.top_k > 0:
        k = min(settings.top_k, scores.shape[-1])
        kth = torch.topk(scores, k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p < 1.0:
        # As TopPLogitsWarper: drop the low tail whose cumulative mass is <= 1 - top_p; keep >= 1 token.
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - settings.top_p)
        remove[-1] = False
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = scores.softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
