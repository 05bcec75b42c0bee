"""Token selection: greedy argmax, or temperature -> top-k -> top-p sampling, for a whole batch on its device.

Pure functions of logits, settings and per-request generators; the Engine calls `select_tokens` once per
decode step. The warpers reproduce transformers' TemperatureLogitsWarper -> TopKLogitsWarper ->
TopPLogitsWarper bit for bit, and a row's draw depends only on its own generator (same seed, same
tokens whatever the batch).
"""
from __future__ import annotations

from typing import Sequence

import torch

from model_runtime.types import GenerationSettings


def generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A per-request generator on the device that samples (same seed, same draws, whatever the batch)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(R, V) float32 logits -> warped scores, exactly transformers' TemperatureLogitsWarper ->
    TopKLogitsWarper -> TopPLogitsWarper (the same ops with the same Python scalars, so the same bits)."""
    scores = logits / temperature
    if top_k > 0:
        k = min(top_k, scores.shape[-1])
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], float("-inf"))
    if top_p < 1.0:
        # drop the low tail whose cumulative mass is <= 1 - top_p; always keep the top token
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return scores


def sample_batch(logits: torch.Tensor, settings: Sequence[GenerationSettings],
                 generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One draw per row of (R, V) logits, on their device: warp -> softmax -> draw; returns (R,) long.

    Rows sharing (temperature, top_k, top_p) are warped together (one batched pass in the usual case of
    one setting per batch). The draw is torch.multinomial's own one-sample algorithm,
    ``argmax(probs / q)`` with ``q ~ Exp(1)``, done by hand so that each row uses its own generator
    (same seed, same tokens whatever the batch) with one argmax for the batch and no host sync:
    the same generator state gives the same token as ``torch.multinomial(probs_row, 1, generator=g)``.
    """
    scores = logits.float()
    groups: dict[tuple[float, int, float], list[int]] = {}
    for i, s in enumerate(settings):
        groups.setdefault((s.temperature, s.top_k, s.top_p), []).append(i)
    if len(groups) == 1:
        (temperature, top_k, top_p), = groups
        scores = warp(scores, temperature, top_k, top_p)
    else:
        warped = torch.empty_like(scores)
        for (temperature, top_k, top_p), rows in groups.items():
            index = torch.tensor(rows, device=scores.device)
            warped.index_copy_(0, index, warp(scores.index_select(0, index), temperature, top_k, top_p))
        scores = warped
    probs = scores.softmax(dim=-1)                 # (R, V) float32
    q = torch.empty_like(probs)
    for i, g in enumerate(generators):             # (V,) exponentials per row, from that row's generator
        q[i].exponential_(1.0, generator=g)
    return (probs / q).argmax(dim=-1)


def sample(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> int:
    """One draw from (V,) logits: temperature -> top-k -> top-p, as transformers' warpers in that order."""
    return int(sample_batch(logits[None], [settings], [generator])[0])


def select_tokens(logits: torch.Tensor, settings: Sequence[GenerationSettings],
                  generators: Sequence[torch.Generator | None], vocab_size: int) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids on the device; each row with its own settings and generator.

    Greedy rows take the argmax; the others are drawn with `sample_batch`. Logit rows beyond the
    tokenizer's `vocab_size` (none in the released checkpoint) never win.
    """
    if logits.shape[-1] > vocab_size:
        logits = logits.clone()
        logits[:, vocab_size:] = float("-inf")
    tokens = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(settings) if not s.greedy]
    if rows:
        if len(rows) == len(settings):
            return sample_batch(logits, settings, generators)
        index = torch.tensor(rows, device=logits.device)
        drawn = sample_batch(logits.index_select(0, index), [settings[i] for i in rows],
                             [generators[i] for i in rows])
        tokens = tokens.index_copy(0, index, drawn)
    return tokens
