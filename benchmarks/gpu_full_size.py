"""Full-size CXR-LLAVA-v2 speed on one GPU, through the product's Engine.generate, with random weights.

Builds the published architecture (CLIP-L/16 at 512 px with 1 channel + Llama-2-7B dims) from a
published-layout config via model_runtime (CheckpointSpec -> VipLlavaConfig), directly on the device;
no download, no carried weights. Speed does not depend on the weight values, so every report has exactly
--new-tokens tokens (EOS ignored). The prompt is the released report prompt's 98 reference token ids
(1121 positions with the image), so no tokenizer file is needed.

Every row is one `Engine.generate` measurement (benchmarks/generate.py::measure_engine: one untimed
warm-up call of the measured shape, compilation and CUDA-graph recording included, then the timed call),
and prints the decode path the Engine ran. In order:
- bf16 static (decode="static": StaticCache + torch.compile "reduce-overhead", CUDA graphs) at batch 1:
  the baseline of every ratio; its % of the bandwidth limit;
- bf16 eager at batch 1 (reference);
- bf16 static reports/s at --batches (8, 32, 64);
- torchao int4 weight-only (tinygemm, group --group-size) static at batch 1 (tok/s, peak memory, ratio to
  the baseline) and at --batch; then its greedy tokens against bf16's on the same image (first divergence);
- optional (--with nf4,8bit): bitsandbytes NF4 / int8, eager, batch 1.
A summary compares the figures with the goals of issue 17. A time budget (--budget-s, counted from the
end of the bf16 build) skips what is left rather than overrun. `--tiny` runs the same code on CPU with
tiny dims (static without compile; int4 on the CPU kernel): it checks the script, measures nothing real.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch._dynamo

import logging

# bitsandbytes logs a warning on every int8 matmul (bf16 -> fp16 cast): one line per layer per token
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from generate import (  # noqa: E402
    HEADER, ReportPrompt, Row, bandwidth_limit, images, measure_engine, reset_peak, weight_bytes_per_token,
)
from model_runtime import Engine, GenerationRequest, GenerationSettings, ModelIdentity  # noqa: E402
from model_runtime.checkpoint import CheckpointSpec  # noqa: E402
from model_runtime.quantize import int4_group_size, kernel_name, quantization_config  # noqa: E402
from model_runtime.types import IMAGE_SENTINEL  # noqa: E402

# reference/CXR_LLAVA.md: the report prompt's ids with the Llama 2 tokenizer (image at index 42).
REPORT_IDS = [
    1, 1, 29961, 25580, 29962, 3532, 14816, 29903, 6778, 13, 3492, 526, 263, 8444, 17937, 19915, 29889, 3967, 304,
    6613, 521, 342, 921, 15570, 1967, 322, 1234, 304, 278, 1139, 393, 1404, 8128, 29889, 13, 29966, 829, 14816,
    29903, 6778, 13, 13, IMAGE_SENTINEL, 29871, 13, 6113, 263, 17937, 1189, 293, 3461, 373, 278, 2183, 521, 342,
    17937, 1946, 29892, 3704, 2472, 1048, 263, 371, 781, 25101, 29892, 5881, 14910, 387, 14997, 29892, 1136, 17211,
    362, 29892, 9505, 3712, 653, 1226, 2603, 29892, 5644, 3631, 1801, 3958, 29892, 322, 282, 29765, 720, 272, 1165,
    29889, 518, 29914, 25580, 29962,
]


class FixedPromptTokenizer:
    """Stand-in tokenizer for speed runs: every prompt is the released report prompt (exact ids and length)."""

    def __init__(self, vocab_size: int):
        self.vocab_size, self.bos_id, self.eos_id, self.unk_id = vocab_size, 1, 2, 0
        self.ids = [i if i == IMAGE_SENTINEL else i % vocab_size for i in REPORT_IDS]

    def encode_prompt(self, prompt) -> list[int]:
        return list(self.ids)

    def decode(self, ids) -> str:
        return ""


def published_config(tiny: bool) -> dict:
    """The published config.json's architecture keys (full size, or tiny for --tiny)."""
    if tiny:
        vis = {"image_size": 64, "layers": 2, "patch_size": 16, "width": 64, "head_width": 32}
        llama = {"hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 4, "num_hidden_layers": 2,
                 "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}
    else:
        vis = {"image_size": 512, "layers": 24, "patch_size": 16, "width": 1024}
        llama = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
                 "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}
    llama.update({"hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                  "model_type": "llama", "rope_scaling": None, "tie_word_embeddings": False})
    return {"model_type": "CXR-LLAVA", "architectures": ["CXRLLAVAModel"], "clip_vision_cfg": vis,
            "clip_embed_dim": 128, "clip_quick_gelu": False, "mm_projector_dim": vis["width"],
            "image_preprocess_cfg": {"mean": 0.5518136078431373, "std": 0.3821719215686275}, "llama": llama}


def build_random(spec: CheckpointSpec, device: torch.device, dtype: torch.dtype):
    """The native model with random weights, allocated directly on the device in `dtype`."""
    from transformers import VipLlavaForConditionalGeneration

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = VipLlavaForConditionalGeneration(spec.vipllava_config())
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def build_quantized(spec: CheckpointSpec, state_dict: dict, device: torch.device, quantization: str,
                    group_size: int | None = None):
    """Quantize exactly as model_runtime.load does (from_pretrained with a state dict + its quantization config)."""
    from transformers import VipLlavaForConditionalGeneration

    dmap = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    qc = quantization_config(quantization, device=device, group_size=group_size or 128, dtype=torch.bfloat16)
    model = VipLlavaForConditionalGeneration.from_pretrained(
        None, config=spec.vipllava_config(), state_dict=dict(state_dict), dtype=torch.bfloat16,
        quantization_config=qc, device_map=dmap)
    return model.eval()


def engine_for(model, spec: CheckpointSpec, quantization: str, decode: str = "eager", compile_: bool = False,
               kernel: str = "torch") -> Engine:
    return Engine(model, FixedPromptTokenizer(int(spec.llama["vocab_size"])),
                  identity=ModelIdentity("random-full-size", None, "bfloat16", quantization, kernel),
                  image_size=spec.image_size, image_mean=spec.image_mean, image_std=spec.image_std,
                  eos_token_id=2, decode=decode, compile=compile_)


def stored_bytes(model) -> int:
    """Bytes of the language model's weights as stored (a quantized tensor subclass counts its packed parts).

    generate.weight_bytes_per_token counts logical elements at the logical dtype, which for torchao's
    int4 tensors would be the bf16 size.
    """
    def size(t) -> int:
        if hasattr(t, "__tensor_flatten__"):  # traceable tensor subclass: its inner tensors hold the data
            names, _ = t.__tensor_flatten__()
            return sum(size(getattr(t, name)) for name in names)
        return t.numel() * t.element_size()

    return sum(size(p) for name, p in list(model.named_parameters()) + list(model.named_buffers())
               if "vision_tower" not in name and "multi_modal_projector" not in name)


def with_bandwidth(row: Row, device: torch.device, weight_bytes: int) -> Row:
    """The row's %BW against `weight_bytes` read per token (batch 1 on a known GPU only)."""
    limit = bandwidth_limit(device)
    if limit and row.batch == 1:
        row.bw_fraction = row.decode_tok_s / (limit / weight_bytes)
    return row


def greedy_tokens(engine: Engine, n: int) -> tuple[int, ...]:
    """The greedy tokens of one report (EOS ignored) on the first benchmark image."""
    req = GenerationRequest(images(1, engine.image_size)[0], ReportPrompt(),
                            GenerationSettings(temperature=0, max_new_tokens=n, ignore_eos=True))
    return engine.generate([req])[0].token_ids


def first_divergence(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    """Index of the first differing token, or None when they agree over the shorter length."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny dims on CPU: checks the script, measures nothing real")
    ap.add_argument("--batch", type=int, default=8, help="int4's second batch size")
    ap.add_argument("--batches", default="8,32,64", help="bf16 static throughput batch sizes")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--new-tokens-8bit", type=int, default=32, help="bitsandbytes int8 decodes slowly: fewer tokens")
    ap.add_argument("--group-size", type=int, default=None,
                    help="int4 group size (default: the loader's, 128 at full size)")
    ap.add_argument("--budget-s", type=float, default=420,
                    help="after the bf16 build: skip the variants left once this much time is spent")
    ap.add_argument("--skip", default="", help="comma list of: static,eager,batches,int4,agreement")
    ap.add_argument("--with", dest="extra", default="", help="comma list of: nf4,8bit (bitsandbytes, eager)")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    extra = [q for q in ("nf4", "8bit") if q in set(filter(None, args.extra.split(",")))]
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    compile_ = device.type == "cuda"  # on CPU (--tiny) the static path runs uncompiled
    spec = CheckpointSpec.from_config(published_config(args.tiny))
    group = int4_group_size(spec.llama, args.group_size, device)
    torch.manual_seed(0)
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"transformers {transformers.__version__}; {args.new_tokens} new tokens (EOS ignored); "
          f"prompt {len(REPORT_IDS) - 1 + spec.image_tokens} positions; every row through Engine.generate",
          flush=True)
    rows: dict[str, Row] = {}
    skipped: list[str] = []
    notes: list[str] = []
    built = time.perf_counter()
    model = build_random(spec, device, torch.bfloat16)
    bf16_bytes = weight_bytes_per_token(model)
    print(f"# built bf16 model in {time.perf_counter() - built:.0f} s; LM weight bytes/token "
          f"{bf16_bytes / 1e9:.2f} GB; budget {args.budget_s:.0f} s from here", flush=True)
    start = time.perf_counter()

    def over_budget(name: str, group_: str) -> bool:
        elapsed = time.perf_counter() - start
        if group_ in skip:
            skipped.append(f"{name} (--skip {group_})")
        elif elapsed > args.budget_s:
            skipped.append(f"{name} (budget: {elapsed:.0f} s spent)")
        else:
            return False
        return True

    def step(name: str, group_: str, fn) -> None:
        if over_budget(name, group_):
            return
        try:
            row = fn()
            rows[name] = row
            print(row.line(), flush=True)
        except Exception as exc:  # report and go on: one broken variant must not lose the others
            skipped.append(f"{name} (failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            print(f"# {name} failed: {type(exc).__name__}: {exc}", flush=True)

    print(HEADER, flush=True)
    n = args.new_tokens
    static = engine_for(model, spec, "none", "static", compile_)
    label = f"bf16 static ({static.decode_path})"
    step("bf16 static:1", "static", lambda: measure_engine(static, label + " BASELINE", 1, n))
    eager = engine_for(model, spec, "none", "eager")
    step("bf16 eager:1", "eager", lambda: measure_engine(eager, "bf16 eager", 1, n))
    del eager
    for b in [int(x) for x in args.batches.split(",") if x]:
        step(f"bf16 static:{b}", "batches", lambda b=b: measure_engine(static, label, b, n))
    reference = None
    if "agreement" not in skip and "int4" not in skip:
        try:
            reference = greedy_tokens(static, n)
        except Exception as exc:
            skipped.append(f"agreement reference (failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    del static
    quant_left = (["int4"] if "int4" not in skip else []) + extra
    state = {k: v.to("cpu") for k, v in model.state_dict().items()} if quant_left else {}
    del model
    torch._dynamo.reset()  # drop compiled graphs (and their CUDA-graph memory) before the quantized peaks
    reset_peak(device)
    if "int4" in skip:
        skipped.append("int4 (--skip int4)")
    for quant in quant_left:
        if over_budget(f"{quant} (build)", quant):
            continue
        bnb = {"nf4": "4bit", "8bit": "8bit"}.get(quant)
        try:
            t0 = time.perf_counter()
            qmodel = build_quantized(spec, state, device, bnb or "int4", group)
            kernel = kernel_name(bnb or "int4", device, group)
            decode, comp = ("eager", False) if bnb else ("static", compile_)
            qeng = engine_for(qmodel, spec, bnb or "int4", decode, comp, kernel)
            q_bytes = stored_bytes(qmodel)
            print(f"# built {kernel} in {time.perf_counter() - t0:.0f} s; LM weight bytes/token "
                  f"{q_bytes / 1e9:.2f} GB (stored)", flush=True)
        except Exception as exc:
            skipped.append(f"{quant} (load failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            continue
        reset_peak(device)
        if quant == "int4":
            qlabel = f"int4 {kernel} ({qeng.decode_path})"
            step("int4:1", "int4", lambda: with_bandwidth(measure_engine(qeng, qlabel, 1, n), device, q_bytes))
            step(f"int4:{args.batch}", "int4", lambda: measure_engine(qeng, qlabel, args.batch, n))
            if reference is not None and not over_budget("int4 agreement", "agreement"):
                try:
                    got = greedy_tokens(qeng, n)
                    at = first_divergence(reference, got)
                    notes.append(f"greedy int4 vs bf16 (random weights, {n} tokens, batch 1): " + (
                        "identical" if at is None else f"first divergence at token {at} "
                        f"({sum(x == y for x, y in zip(reference, got))}/{n} positions equal)"))
                except Exception as exc:
                    skipped.append(f"int4 agreement (failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        else:
            n_q = n if quant == "nf4" else min(args.new_tokens_8bit, n)
            step(f"{quant}:1", quant, lambda: with_bandwidth(
                measure_engine(qeng, f"{kernel} eager ({n_q} tok)", 1, n_q), device, q_bytes))
        del qeng, qmodel
        reset_peak(device)
    print(f"# total {time.perf_counter() - start:.0f} s after the build ({time.perf_counter() - built:.0f} s with it)")
    summary(rows, device, bf16_bytes, notes)
    for s_ in skipped:
        print(f"# skipped: {s_}")
    return 0 if rows else 1


def summary(rows: dict[str, Row], device: torch.device, bf16_bytes: int, notes: list[str]) -> None:
    """Issue 17's figures against the bf16 static batch-1 baseline, with its goals."""
    print("# summary (goals of issue 17 in brackets)")
    base = rows.get("bf16 static:1")
    limit = bandwidth_limit(device)
    if base is not None:
        bw = f"{base.bw_fraction:.0%} of the bandwidth limit" if base.bw_fraction is not None else "no bandwidth figure"
        print(f"# bf16 static batch 1: {base.decode_tok_s:.1f} tok/s ({base.path}), {bw} [>= 60%]"
              + (f"; limit {limit / bf16_bytes:.0f} tok/s" if limit else ""))
    q = rows.get("int4:1")
    if q is not None:
        ratio = f"{q.decode_tok_s / base.decode_tok_s:.2f}x bf16 static" if base else "no baseline"
        bw = f", {q.bw_fraction:.0%} of its own bandwidth limit" if q.bw_fraction is not None else ""
        print(f"# int4 batch 1: {q.decode_tok_s:.1f} tok/s = {ratio} [>= 1.3x], peak {q.peak_gb:.2f} GB [<= 6 GB]{bw}")
    for name, row in rows.items():
        if name.startswith("bf16 static:") and row.batch > 1:
            print(f"# bf16 static batch {row.batch}: {row.reports_s:.2f} reports/s"
                  + (" [>= 20 at batch 64]" if row.batch == 64 else ""))
    for note in notes:
        print(f"# {note}")


if __name__ == "__main__":
    sys.exit(main())
