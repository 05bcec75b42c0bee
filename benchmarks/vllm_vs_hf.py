"""hf (bf16, static cache + compile) vs vllm (bf16) on one GPU host, in one run, on the same reports.

For a site's GPU host with vLLM installed: this project's borrowed GPU machines have no network and take
64 MiB of files, so vLLM cannot be installed there (benchmarks/RESULTS.md). Start the server first, on the
same GPU, leaving room for the in-process engine (bf16 CXR-LLAVA-v2: ~15 GB, more with batch 64):

    cxr-cds model export-decoder /srv/models/CXR-LLAVA-v2 /srv/decoder
    vllm serve /srv/decoder --enable-prompt-embeds --dtype bfloat16 --max-model-len 4096 \\
        --gpu-memory-utilization 0.45 --port 8000 &
    python benchmarks/vllm_vs_hf.py --model /srv/models/CXR-LLAVA-v2 --vllm-url http://127.0.0.1:8000

Prints, per backend: tok/s at batch 1, time to first token (a one-token report: encoder + prefill +
first token), reports/s at 8/32/64 concurrent (hf: one batch through Engine.generate; vllm: that many
concurrent requests), peak memory (hf: torch's peak on the device; vllm: our encoder's peak and the
GPU memory the server holds, from nvidia-smi), and the first position where the two backends' greedy
tokens differ, over --divergence-images images (bf16 is not bit-equal across kernels: a distribution).
The vllm backend reuses the hf engine's vision tower as its encoder, so both read identical embeddings.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_runtime import (  # noqa: E402
    GenerationRequest, GenerationSettings, HFBackend, ModelConfig, ModelRuntimeError, load,
)
from model_runtime.vllm_backend import VllmBackend, describe_server  # noqa: E402

SYSTEM = "You are a helpful radiologist. Try to interpret chest x ray image and answer to the question that user provides."
REPORT = ("<image>\nWrite a radiologic report on the given chest radiograph, including information about "
          "atelectasis, cardiomegaly, consolidation, pulmonary edema, pleural effusion, and pneumothorax.\n")


class Prompt:
    id, version, system, user = "report", "v1", SYSTEM, REPORT


def images(n: int, folder: Path | None) -> list[np.ndarray]:
    """``n`` (H, W) uint8 images: PNG/JPEG files from ``folder`` (cycled), else synthetic radiograph-like noise."""
    if folder is not None:
        from PIL import Image

        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            sys.exit(f"no .png/.jpg files in {folder}")
        return [np.asarray(Image.open(files[i % len(files)]).convert("L")) for i in range(n)]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[0:512, 0:512]
        base = 128 + 60 * np.sin(xx / (20 + i)) * np.cos(yy / (30 + i))
        out.append(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))
    return out


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def gpu_used_mib() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
        return "/".join(out) + " MiB"
    except (OSError, subprocess.SubprocessError):
        return "n/a (no nvidia-smi)"


def first_divergence(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    """First index where the token ids differ (a length difference counts); None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the published CXR-LLAVA checkpoint (the server's decoder source)")
    ap.add_argument("--vllm-url", required=True)
    ap.add_argument("--images", type=Path, default=None, help="folder of PNG/JPEG radiographs (default: synthetic)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens per report for the speed rows (EOS ignored)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--divergence-images", type=int, default=32)
    ap.add_argument("--timeout-s", type=float, default=600)
    args = ap.parse_args()

    import requests
    import torch

    if not torch.cuda.is_available():
        sys.exit("this benchmark is for a GPU host (hf bf16 static + compile vs vllm bf16); no CUDA device here")
    engine = load(ModelConfig(model=args.model, device="cuda", dtype="bfloat16", quantization="none",
                              decode="static", compile=True))
    hf = HFBackend(engine)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=max(args.concurrency)))
    info = describe_server(session, args.vllm_url, args.timeout_s)
    vllm = VllmBackend(engine, session, args.vllm_url, timeout_s=args.timeout_s,
                       max_concurrency=max(args.concurrency), **info)
    print(f"hf: {hf.identity}\nvllm: {vllm.identity} (max_model_len {info['max_model_len']})")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; nvidia-smi used before: {gpu_used_mib()}")

    prompt = Prompt()
    fixed = GenerationSettings(temperature=0.0, max_new_tokens=args.new_tokens, ignore_eos=True)
    pool = images(max(max(args.concurrency), args.divergence_images), args.images)
    backends = {"hf": hf, "vllm": vllm}
    rows = {name: {} for name in backends}
    torch.cuda.reset_peak_memory_stats()
    for name, backend in backends.items():
        # warm-up: compile (hf) / first requests (vllm) for batch 1 and each concurrency
        backend.generate([GenerationRequest(pool[0], prompt, fixed)])
        _, ttft = timed(lambda: backend.generate([GenerationRequest(pool[1], prompt, GenerationSettings(
            temperature=0.0, max_new_tokens=1, ignore_eos=True))]))
        (res,), wall = timed(lambda: backend.generate([GenerationRequest(pool[2], prompt, fixed)]))
        rows[name]["ttft_ms"] = ttft * 1e3
        rows[name]["tok_s_b1"] = res.new_tokens / (wall - ttft) if wall > ttft else float("nan")
        for c in args.concurrency:
            batch = [GenerationRequest(pool[i], prompt, fixed) for i in range(c)]
            try:
                backend.generate(batch[: min(c, 8)])      # warm the shape (hf compiles per batch size)
                results, wall = timed(lambda: backend.generate(batch))
                rows[name][f"rps_{c}"] = len(results) / wall
            except ModelRuntimeError as exc:           # OutOfMemory at 64 for hf, a timeout for vllm
                rows[name][f"rps_{c}"] = f"{type(exc).__name__}"
        torch.cuda.synchronize()
        rows[name]["peak"] = (f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (this process)"
                              + ("" if name == "hf" else f"; server+all: {gpu_used_mib()}"))
        torch.cuda.reset_peak_memory_stats()

    print(f"\n{'backend':<8} {'tok/s b1':>9} {'TTFT ms':>8} " + " ".join(f"{'rep/s@' + str(c):>9}" for c in args.concurrency)
          + "  peak memory")
    for name, r in rows.items():
        cells = " ".join(f"{r[f'rps_{c}']:>9.2f}" if isinstance(r[f"rps_{c}"], float) else f"{r[f'rps_{c}']:>9}"
                         for c in args.concurrency)
        print(f"{name:<8} {r['tok_s_b1']:>9.1f} {r['ttft_ms']:>8.1f} {cells}  {r['peak']}")
    for c in args.concurrency:
        a, b = rows["hf"][f"rps_{c}"], rows["vllm"][f"rps_{c}"]
        if isinstance(a, float) and isinstance(b, float):
            print(f"vllm/hf reports/s at {c} concurrent: {b / a:.2f}x")

    # greedy reports to EOS (the product's setting): where do bf16 kernels first disagree?
    greedy = GenerationSettings(temperature=0.0)
    reqs = [GenerationRequest(im, prompt, greedy) for im in pool[: args.divergence_images]]
    ref = [r for i in range(0, len(reqs), 8) for r in hf.generate(reqs[i:i + 8])]
    ours = vllm.generate(reqs)
    firsts = [first_divergence(a.token_ids, b.token_ids) for a, b in zip(ref, ours)]
    diverged = sorted(f for f in firsts if f is not None)
    print(f"\nfirst divergence of greedy tokens, {len(reqs)} reports: {len(reqs) - len(diverged)} identical")
    if diverged:
        q = statistics.quantiles(diverged, n=4) if len(diverged) > 1 else [diverged[0]] * 3
        print(f"  diverged at position min {diverged[0]}, quartiles {q[0]:.0f}/{q[1]:.0f}/{q[2]:.0f}, "
              f"max {diverged[-1]} (of {statistics.mean(len(r.token_ids) for r in ref):.0f} tokens on average)")
        edges = [0, 8, 32, 128, 512]
        hist = [sum(lo <= f < hi for f in diverged) for lo, hi in zip(edges, edges[1:] + [10**9])]
        print("  histogram: " + ", ".join(f"[{lo},{hi if hi < 10**9 else 'inf'}): {n}"
                                          for lo, hi, n in zip(edges, edges[1:] + [10**9], hist)))
    vllm.close()


if __name__ == "__main__":
    main()
