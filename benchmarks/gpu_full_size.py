"""Full-size CXR-LLAVA-v2 speed on one GPU, through OUR runtime, with random weights built in memory.

Builds the published architecture (CLIP-L/16 at 512 px with 1 channel + Llama-2-7B dims) from a
published-layout config via model_runtime (CheckpointSpec -> VipLlavaConfig), directly on the device;
no download. Speed does not depend on the weight values, so every report has exactly --new-tokens
tokens (EOS ignored). The prompt is the released report prompt's 98 reference token ids (1121
positions with the image), so no tokenizer file is needed.

Variants: the original's approach (bf16 eager, one image at a time), bf16 eager batch 1/N, 4bit and
8bit (bitsandbytes, as model_runtime.load builds them) batch 1/N, and bf16 static cache +
torch.compile (transformers' generate on our prepared inputs) batch 1/N. A time budget skips what is
left rather than overrun. `--tiny` runs the same code on CPU with tiny dims (for CI-style checks).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

import logging

# bitsandbytes logs a warning on every int8 matmul (bf16 -> fp16 cast): one line per layer per token
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from generate import HEADER, ReportPrompt, Row, bandwidth_limit, images, measure_engine, peak_gb, reset_peak, \
    weight_bytes_per_token  # noqa: E402
from model_runtime import Engine, ModelIdentity  # noqa: E402
from model_runtime.checkpoint import CheckpointSpec  # noqa: E402
from model_runtime.loader import quantization_config  # noqa: E402
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
        llama = {"hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 4, "num_hidden_layers": 2,
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


def build_quantized(spec: CheckpointSpec, state_dict: dict, device: torch.device, quantization: str):
    """Quantize exactly as model_runtime.load does (from_pretrained with a state dict + BitsAndBytesConfig)."""
    from transformers import VipLlavaForConditionalGeneration

    dmap = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model = VipLlavaForConditionalGeneration.from_pretrained(
        None, config=spec.vipllava_config(), state_dict=state_dict, dtype=torch.bfloat16,
        quantization_config=quantization_config(quantization, torch.bfloat16), device_map=dmap)
    return model.eval()


def engine_for(model, spec: CheckpointSpec, quantization: str) -> Engine:
    return Engine(model, FixedPromptTokenizer(int(spec.llama["vocab_size"])),
                  identity=ModelIdentity("random-full-size", None, "bfloat16", quantization),
                  image_size=spec.image_size, image_mean=spec.image_mean, image_std=spec.image_std,
                  max_positions=int(spec.llama["max_position_embeddings"]), eos_token_id=2)


def measure_static(engine: Engine, batch: int, new_tokens: int, compile_: bool) -> Row:
    """transformers' generate with a static cache (+ torch.compile of the decode step) on OUR prepared inputs."""
    device = engine.device
    imgs = images(batch, engine.image_size)
    prepared = engine.prepare(imgs, [ReportPrompt()] * batch)

    def run(n: int) -> float:
        engine._sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            engine.model.generate(
                inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask, do_sample=False,
                max_new_tokens=n, min_new_tokens=n, cache_implementation="static", pad_token_id=0,
                eos_token_id=2, disable_compile=not compile_)
        engine._sync()
        return time.perf_counter() - t0

    run(new_tokens)  # warm-up: compiles (and captures CUDA graphs) for this batch size
    reset_peak(device)
    t_full = run(new_tokens)
    t_first = run(1)
    decode = (new_tokens - 1) / max(t_full - t_first, 1e-9)
    limit = bandwidth_limit(device)
    frac = decode / (limit / weight_bytes_per_token(engine.model)) if limit and batch == 1 else None
    label = "bf16 static+compile" if compile_ else "bf16 static (no compile)"
    return Row(label, batch, prepared.features_ms + t_first * 1e3, decode, batch / (t_full + prepared.features_ms / 1e3),
               peak_gb(device), frac)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny dims on CPU: checks the script, measures nothing real")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--new-tokens-8bit", type=int, default=32, help="bitsandbytes int8 decodes slowly: fewer tokens")
    ap.add_argument("--budget-s", type=float, default=330, help="skip the variants left once this much time is spent")
    ap.add_argument("--skip", default="", help="comma list of: original,eager,4bit,8bit,static")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    compile_ = device.type == "cuda"
    spec = CheckpointSpec.from_config(published_config(args.tiny))
    torch.manual_seed(0)
    import transformers

    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"transformers {transformers.__version__}; {args.new_tokens} new tokens (EOS ignored); "
          f"prompt {len(REPORT_IDS) - 1 + spec.image_tokens} positions", flush=True)
    rows: list[Row] = []
    skipped: list[str] = []

    def step(name: str, fn) -> None:
        elapsed = time.perf_counter() - start
        if name.split(":")[0] in skip:
            skipped.append(f"{name} (--skip)")
        elif elapsed > args.budget_s:
            skipped.append(f"{name} (budget: {elapsed:.0f} s spent)")
        else:
            try:
                row = fn()
                rows.append(row)
                print(row.line(), flush=True)
            except Exception as exc:  # report and go on: one broken variant must not lose the others
                skipped.append(f"{name} (failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
                print(f"# {name} failed: {type(exc).__name__}: {exc}", flush=True)

    print(HEADER, flush=True)
    model = build_random(spec, device, torch.bfloat16)
    print(f"# built bf16 model in {time.perf_counter() - start:.0f} s; LM weight bytes/token "
          f"{weight_bytes_per_token(model) / 1e9:.2f} GB", flush=True)
    eng = engine_for(model, spec, "none")
    step("original", lambda: _renamed(measure_engine(eng, "bf16", args.batch, args.new_tokens, sequential=True),
                                      "original: bf16 eager 1-by-1"))
    step("eager:1", lambda: _renamed(measure_engine(eng, "bf16", 1, args.new_tokens), "bf16 eager"))
    step("eager:N", lambda: _renamed(measure_engine(eng, "bf16", args.batch, args.new_tokens), "bf16 eager"))
    state = {k: v.to("cpu") for k, v in model.state_dict().items()}
    del eng, model
    reset_peak(device)
    for quant, n in (("4bit", args.new_tokens), ("8bit", min(args.new_tokens_8bit, args.new_tokens))):
        if quant in skip or time.perf_counter() - start > args.budget_s:
            skipped.append(f"{quant} ({'--skip' if quant in skip else 'budget'})")
            continue
        try:
            qmodel = build_quantized(spec, state, device, quant)
        except Exception as exc:
            skipped.append(f"{quant} (load failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            continue
        qeng = engine_for(qmodel, spec, quant)
        step(f"{quant}:1", lambda: _renamed(measure_engine(qeng, "", 1, n), f"{quant} eager ({n} tok)"))
        step(f"{quant}:N", lambda: _renamed(measure_engine(qeng, "", args.batch, n), f"{quant} eager ({n} tok)"))
        del qeng, qmodel
        reset_peak(device)
    if "static" not in skip and time.perf_counter() - start <= args.budget_s:
        model = build_random(spec, device, torch.bfloat16)
        model.load_state_dict(state)
        eng = engine_for(model, spec, "none")
        step("static:1", lambda: measure_static(eng, 1, args.new_tokens, compile_))
        step("static:N", lambda: measure_static(eng, args.batch, args.new_tokens, compile_))
    else:
        skipped.append("static (--skip or budget)")
    print(f"# total {time.perf_counter() - start:.0f} s")
    for s in skipped:
        print(f"# skipped: {s}")
    return 0 if rows else 1


def _renamed(row: Row, variant: str) -> Row:
    row.variant = variant
    return row


if __name__ == "__main__":
    sys.exit(main())
