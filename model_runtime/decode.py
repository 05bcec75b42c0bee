"""The two decode backends behind `Engine.generate`: the same loop, the same tokens.

- `EagerDecoder`: a DynamicCache that grows by one position per step; every step is a fresh eager forward.
- `StaticDecoder`: a StaticCache of a fixed length (prompt + new-token cap rounded up to
  STATIC_CACHE_MULTIPLE positions), the prefill eager, and each one-token decode step through the
  Engine's `decode_step` (``torch.compile`` of the model's call when compiling; mode COMPILE_MODE,
  "reduce-overhead", records and replays CUDA graphs on CUDA). The 2-D attention mask spans the whole
  cache and never changes while decoding (the causal mask comes from the cache's own length), so every
  step has the same shapes: one compiled graph per (batch size, cache length), as transformers' own
  ``generate(cache_implementation="static")``.

With a compiled decode, batches are padded up to a size in BATCH_BUCKETS (repeating the last request,
whose extra outputs are dropped) so that a service's micro-batches of 1..N share a few compiled
graphs that `Engine.warm_up` records at start-up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the decoders drive an Engine; engine.py imports this module
    from model_runtime.engine import Engine, PreparedBatch

# The original's context: prompt + new tokens never exceed it (the Engine's cap keeps them below).
CONTEXT_LENGTH = 2048
# Static cache lengths are rounded up to this many positions, so prompts of similar length share one
# compiled graph. A report request (>= 1024 image positions + its prompt, up to 512 new tokens) lands
# on CONTEXT_LENGTH, the length `Engine.warm_up` compiles by default; a shorter cap (benchmarks, 128
# new tokens) gets a shorter cache, which decoding reads whole every step.
STATIC_CACHE_MULTIPLE = 512
# transformers' CompileConfig default for generate's static-cache decoding: CUDA graphs, graph breaks allowed.
COMPILE_MODE = "reduce-overhead"
# Distinct (batch size, cache length) shapes kept compiled; dynamo's default limit (8) would send a
# service's 9th shape back to eager without a word.
MAX_COMPILED_SHAPES = 64
# Batch sizes a compiled decode runs at (a batch is padded up to the next one; past the last, to a
# multiple of it): CUDA graphs are recorded per shape, so a few sizes cover every micro-batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def static_cache_length(prompt_positions: int, max_new_tokens: int) -> int:
    """Cache positions for a left-padded batch of `prompt_positions` columns and a new-token cap.

    The last new token is never fed back, so ``prompt_positions + max_new_tokens - 1`` positions are
    written at most; rounded up to STATIC_CACHE_MULTIPLE.
    """
    return -(-(prompt_positions + max_new_tokens) // STATIC_CACHE_MULTIPLE) * STATIC_CACHE_MULTIPLE


def padded_batch_size(batch_size: int) -> int:
    """The BATCH_BUCKETS size a compiled decode runs `batch_size` requests at."""
    for bucket in BATCH_BUCKETS:
        if batch_size <= bucket:
            return bucket
    last = BATCH_BUCKETS[-1]
    return -(-batch_size // last) * last


def allow_recompiles(limit: int) -> None:
    """Raise dynamo's per-function recompile limit to at least `limit` (named recompile_limit since torch 2.6)."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    if getattr(dynamo_config, name, limit) < limit:
        setattr(dynamo_config, name, limit)


class EagerDecoder:
    """DynamicCache: the mask and the cache grow by one position per step."""

    def __init__(self, engine: Engine, batch: PreparedBatch):
        self.engine, self.batch = engine, batch
        self.cache = engine.new_dynamic_cache()
        self.mask = batch.attention_mask               # (B, L + t) long
        self.pos = batch.position_ids[:, -1:]          # (B, 1) long

    def prefill(self) -> torch.Tensor:
        """(B, V) logits of the last prompt position."""
        b = self.batch
        out = self.engine.forward(inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask,
                                  position_ids=b.position_ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, 1) token ids -> (B, V) logits of the next position."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        self.pos = self.pos + 1
        out = self.engine.forward(input_ids=ids, attention_mask=self.mask, position_ids=self.pos, cache=self.cache,
                                  use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]


class StaticDecoder:
    """StaticCache of C positions: fixed shapes every step, so the step can be compiled (and CUDA-graphed)."""

    def __init__(self, engine: Engine, batch: PreparedBatch, cache_length: int):
        self.engine, self.batch = engine, batch
        b, length = batch.attention_mask.shape
        if cache_length < length + 1:
            raise ValueError(f"a static cache of {cache_length} positions cannot hold a {length}-position prompt")
        self.cache = engine.static_cache(b, cache_length)
        # (B, C) long: 0 on the left padding, 1 elsewhere. Positions past the current one are excluded by the
        # causal mask (the cache's own length gives the query offset), so this never changes while decoding.
        self.mask = batch.attention_mask.new_ones((b, cache_length))
        self.mask[:, :length] = batch.attention_mask
        self.pos = batch.position_ids[:, -1:]          # (B, 1) long

    def prefill(self) -> torch.Tensor:
        b = self.batch
        out = self.engine.forward(inputs_embeds=b.inputs_embeds, attention_mask=self.mask,
                                  position_ids=b.position_ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.pos = self.pos + 1
        out = self.engine.decode_step(input_ids=ids, attention_mask=self.mask, position_ids=self.pos,
                                      cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]
