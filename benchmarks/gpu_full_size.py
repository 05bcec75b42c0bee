"""Full-size CXR-LLAVA-v2 speed on one GPU, through the product's Engine.generate, with random weights.

Builds the published architecture (CLIP-L/16 at 512 px with 1 channel + Llama-2-7B dims) from a
published-layout config via model_runtime (CheckpointSpec -> VipLlavaConfig), directly on the device;
no download. Speed does not depend on the weight values, so every report has exactly --new-tokens
tokens (EOS ignored). The prompt is the released report prompt's 98 reference token ids (1121
positions with the image), so no tokenizer file is needed.

Every row is one `Engine.generate` measurement (benchmarks/generate.py::measure_engine: one untimed
warm-up call of the measured shape, then the timed call), and prints the decode path the Engine ran:
- bf16 eager (decode="eager": DynamicCache, eager steps) at batch 1 and --batch;
- the original's approach: the same eager Engine, one image at a time (--original-images images), warmed up
  the same way (one untimed call of its shape: one image);
- bf16 static (decode="static": StaticCache + torch.compile of the decode step on CUDA) at batch 1,
  --batch and --big-batch, plus one sampled row at --batch (temperature 0.2, top_p 0.8);
- 4bit (NF4, eager) at batch 1 and --batch; 8bit at batch 1 with --new-tokens-8bit tokens.
The prompt length is fixed and each batch size is warmed up once, so the static path compiles once
per batch size. A time budget (--budget-s, counted from the end of the bf16 build) skips what is
left rather than overrun. `--tiny` runs the same code on CPU with tiny dims (static without compile).
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

from generate import HEADER, Row, measure_engine, reset_peak, weight_bytes_per_token  # noqa: E402
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
        quantization_config=quantization_config(quantization), device_map=dmap)
    return model.eval()


def engine_for(model, spec: CheckpointSpec, quantization: str, decode: str = "eager", compile_: bool = False) -> Engine:
    return Engine(model, FixedPromptTokenizer(int(spec.llama["vocab_size"])),
                  identity=ModelIdentity("random-full-size", None, "bfloat16", quantization),
                  image_size=spec.image_size, image_mean=spec.image_mean, image_std=spec.image_std,
                  eos_token_id=2, decode=decode, compile=compile_)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny dims on CPU: checks the script, measures nothing real")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--big-batch", type=int, default=32, help="the static path's throughput batch")
    ap.add_argument("--original-images", type=int, default=4,
                    help="images for the one-at-a-time row (its reports/s does not depend on the count)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--new-tokens-8bit", type=int, default=32, help="bitsandbytes int8 decodes slowly: fewer tokens")
    ap.add_argument("--budget-s", type=float, default=300,
                    help="after the bf16 build: skip the variants left once this much time is spent")
    ap.add_argument("--skip", default="", help="comma list of: eager,original,static,sampled,big,4bit,8bit")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    compile_ = device.type == "cuda"  # on CPU (--tiny) the static path runs uncompiled
    spec = CheckpointSpec.from_config(published_config(args.tiny))
    torch.manual_seed(0)
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"transformers {transformers.__version__}; {args.new_tokens} new tokens (EOS ignored); "
          f"prompt {len(REPORT_IDS) - 1 + spec.image_tokens} positions; every row through Engine.generate",
          flush=True)
    rows: list[Row] = []
    skipped: list[str] = []
    built = time.perf_counter()
    model = build_random(spec, device, torch.bfloat16)
    print(f"# built bf16 model in {time.perf_counter() - built:.0f} s; LM weight bytes/token "
          f"{weight_bytes_per_token(model) / 1e9:.2f} GB; budget {args.budget_s:.0f} s from here", flush=True)
    start = time.perf_counter()

    def over_budget(name: str, group: str) -> bool:
        elapsed = time.perf_counter() - start
        if group in skip:
            skipped.append(f"{name} (--skip {group})")
        elif elapsed > args.budget_s:
            skipped.append(f"{name} (budget: {elapsed:.0f} s spent)")
        else:
            return False
        return True

    def step(name: str, group: str, fn) -> None:
        if over_budget(name, group):
            return
        try:
            row = fn()
            rows.append(row)
            print(row.line(), flush=True)
        except Exception as exc:  # report and go on: one broken variant must not lose the others
            skipped.append(f"{name} (failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            print(f"# {name} failed: {type(exc).__name__}: {exc}", flush=True)

    print(HEADER, flush=True)
    n, nb, big = args.new_tokens, args.batch, args.big_batch
    eager = engine_for(model, spec, "none", "eager")
    step("eager:1", "eager", lambda: measure_engine(eager, "bf16 eager", 1, n))
    step(f"eager:{nb}", "eager", lambda: measure_engine(eager, "bf16 eager", nb, n))
    step("original", "original", lambda: measure_engine(eager, "original: bf16 eager 1-by-1", args.original_images, n,
                                                         sequential=True))
    static = engine_for(model, spec, "none", "static", compile_)
    label = "bf16 static" + ("+compile" if compile_ else "")
    step("static:1", "static", lambda: measure_engine(static, label, 1, n))
    step(f"static:{nb}", "static", lambda: measure_engine(static, label, nb, n))
    step(f"static:{nb} sampled", "sampled", lambda: measure_engine(static, f"{label} T0.2 p0.8", nb, n, sampled=True))
    step(f"static:{big}", "big", lambda: measure_engine(static, label, big, n))
    del eager, static
    quant_left = [q for q in ("4bit", "8bit") if q not in skip]
    state = {k: v.to("cpu") for k, v in model.state_dict().items()} if quant_left else {}
    del model
    torch._dynamo.reset()  # drop compiled graphs (and their CUDA-graph memory) before the quantized peaks
    reset_peak(device)
    for quant in quant_left:
        n_q = n if quant == "4bit" else min(args.new_tokens_8bit, n)
        sizes = (1, nb) if quant == "4bit" else (1,)
        if over_budget(f"{quant} (build)", quant):
            continue
        try:
            qeng = engine_for(build_quantized(spec, state, device, quant), spec, quant, "eager")
        except Exception as exc:
            skipped.append(f"{quant} (load failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            continue
        for b in sizes:
            step(f"{quant}:{b}", quant, lambda b=b: measure_engine(qeng, f"{quant} eager ({n_q} tok)", b, n_q))
        del qeng
        reset_peak(device)
    for q in ("4bit", "8bit"):
        if q in skip:
            skipped.append(f"{q} (--skip {q})")
    print(f"# total {time.perf_counter() - start:.0f} s after the build ({time.perf_counter() - built:.0f} s with it)")
    for s in skipped:
        print(f"# skipped: {s}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
