"""Generation benchmark through OUR path (model_runtime.load -> Engine.generate).

Prints, for each precision/quantization and decode backend: prefill ms, decode tokens/s, reports/s at
batch 1 and batch N, peak memory, the decode path each row ran (eager, static, static+compile), and on
CUDA the batch-1 decode rate as a fraction of the memory-bandwidth limit (bandwidth / bytes of
language-model weights read per token).

    python benchmarks/generate.py                       # tiny random model made in a temp dir (CPU ok)
    python benchmarks/generate.py --model DIR --batch 8 --new-tokens 128 --variants bfloat16/none,bfloat16/4bit
    python benchmarks/generate.py --model DIR --decode eager,static   # static: + torch.compile on CUDA

Speed does not depend on weight values; EOS is ignored so every report has exactly --new-tokens tokens.
"""
from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import logging

# bitsandbytes logs a warning on every int8 matmul (bf16 -> fp16 cast): one line per layer per token
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_runtime import GenerationRequest, GenerationSettings, ModelConfig, init_tiny, load  # noqa: E402
from model_runtime.tiny import SYSTEM_PROMPT  # noqa: E402

REPORT_USER = ("<image>\nWrite a radiologic report on the given chest radiograph, including information about "
               "atelectasis, cardiomegaly, consolidation, pulmonary edema, pleural effusion, and pneumothorax.\n")
# Published peak memory bandwidths (bytes/s) for the fraction-of-limit figure.
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.864e12, "A10": 0.6e12}


@dataclass(frozen=True)
class ReportPrompt:
    id: str = "report"
    version: str = "v1"
    system: str = SYSTEM_PROMPT
    user: str = REPORT_USER


@dataclass
class Row:
    variant: str
    batch: int
    prefill_ms: float
    decode_tok_s: float        # per sequence
    reports_s: float
    peak_gb: float
    bw_fraction: float | None = None
    path: str = "eager"        # the Engine's decode path: eager, static or static+compile

    def line(self) -> str:
        bw = f"{self.bw_fraction:.0%}" if self.bw_fraction is not None else "-"
        return (f"| {self.variant:<34} | {self.path:<14} | {self.batch:>5} | {self.prefill_ms:>10.1f} | "
                f"{self.decode_tok_s:>10.1f} | {self.decode_tok_s * self.batch:>10.1f} | {self.reports_s:>9.2f} | "
                f"{self.peak_gb:>7.2f} | {bw:>6} |")


HEADER = ("| variant                            | decode path    | batch | prefill ms | tok/s/seq  | tok/s all  "
          "| reports/s | peak GB | %BW    |\n"
          "|------------------------------------|----------------|-------|------------|------------|------------"
          "|-----------|---------|--------|")
# The sampled row's settings: the released defaults (temperature 0.2, top_p 0.8, top-k 50).
SAMPLED = {"temperature": 0.2, "top_p": 0.8, "seed": 0}


def images(n: int, size: int = 512, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]


def weight_bytes_per_token(model) -> int:
    """Bytes of the weights every decode step reads: the language model + lm_head (not the vision tower)."""
    total = 0
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if "vision_tower" in name or "multi_modal_projector" in name:
            continue
        total += p.numel() * p.element_size()
    return total


def bandwidth_limit(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in BANDWIDTH.items() if key in name), None)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB (process-wide)


def measure_engine(engine, variant: str, batch: int, new_tokens: int, *, sequential: bool = False,
                   sampled: bool = False) -> Row:
    """Time Engine.generate on `batch` images (or one at a time, as the original, when `sequential`).

    Every row is warmed up the same way: one untimed call of exactly the measured shape and settings
    (one image for `sequential`), so kernels, allocator, caches, and for the static path the compiled
    graph of that (batch, cache length), are ready; then the timed call(s). Greedy unless `sampled`
    (SAMPLED settings); EOS ignored so every report has `new_tokens` tokens.
    """
    device = engine.device
    prompt = ReportPrompt()
    knobs = SAMPLED if sampled else {"temperature": 0}
    settings = GenerationSettings(max_new_tokens=new_tokens, ignore_eos=True, **knobs)
    reqs = [GenerationRequest(im, prompt, settings) for im in images(batch, engine.image_size)]
    engine.generate(reqs[:1] if sequential else reqs)  # warm-up: the measured shape, untimed
    reset_peak(device)
    t0 = time.perf_counter()
    results = [engine.generate([r])[0] for r in reqs] if sequential else engine.generate(reqs)
    wall = time.perf_counter() - t0
    r = results[-1]
    assert all(x.new_tokens == new_tokens for x in results), "EOS ignored: every report has new_tokens tokens"
    decode_rate = (r.new_tokens - 1) / (r.timings["decode_ms"] / 1e3) if r.new_tokens > 1 else 0.0
    limit = bandwidth_limit(device)
    frac = None
    if limit and batch == 1:
        frac = decode_rate / (limit / weight_bytes_per_token(engine.model))
    return Row(variant, batch, r.timings["prefill_ms"], decode_rate, len(reqs) / wall, peak_gb(device), frac,
               engine.decode_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint dir or hub id (default: a tiny random model in a temp dir)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--decode", default="eager", help="comma list of eager,static (static compiles on CUDA)")
    ap.add_argument("--variants", default=None,
                    help="comma list of dtype/quantization (default: float32/none,bfloat16/none,float32/8bit,"
                         "bfloat16/4bit on CPU; bfloat16/none,bfloat16/8bit,bfloat16/4bit on CUDA)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    variants = args.variants or ("bfloat16/none,bfloat16/8bit,bfloat16/4bit" if cuda else
                                 "float32/none,bfloat16/none,float32/8bit,bfloat16/4bit")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(init_tiny(Path(tmp) / "tiny", seed=0))
        print(f"model {model}, batch {args.batch}, {args.new_tokens} new tokens (EOS ignored)")
        print(HEADER)
        for v in variants.split(","):
            dtype, quant = v.split("/")
            for decode in args.decode.split(","):
                engine = load(ModelConfig(model=model, device=args.device, dtype=dtype, quantization=quant,
                                          decode=decode))
                for b in (1, args.batch):
                    print(measure_engine(engine, f"{dtype}/{quant}", b, args.new_tokens).line(), flush=True)
                del engine
                gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
