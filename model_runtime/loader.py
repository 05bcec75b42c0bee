"""`load(ModelConfig) -> Engine`: the one place that touches files, the hub and the device.

Reads the published ECOFRI layout (mapped onto VipLlavaForConditionalGeneration with strict checks) or
the native layout written by `convert`. Never runs remote code; never touches the network for a
local directory.
"""
from __future__ import annotations

import hashlib

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from model_runtime.chat import ChatTokenizer
from model_runtime.checkpoint import (
    NATIVE_FORMAT, NATIVE_MARKER, CheckpointSpec, NativeNames, check_published, to_native,
)
from model_runtime.engine import Engine
from model_runtime.errors import ModelLoadError
from model_runtime.quantize import (  # noqa: F401  (re-exported: callers import them from here)
    SKIP_QUANTIZATION, bitsandbytes, int4_group_size, kernel_name, quantization_config,
)
from model_runtime.types import ModelConfig, ModelIdentity

log = logging.getLogger(__name__)

# Files a load needs (and the only ones fetched from the hub: no remote code, no .bin duplicates).
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a requested CUDA device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"device {device!r} is not a torch device (use auto, cpu, cuda, cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was requested but CUDA is not available here; use device 'cpu'")
    return dev


def resolve_precision(config: ModelConfig, device: torch.device) -> tuple[torch.dtype, str]:
    """Defaults: bfloat16 + 4bit on CUDA, float32 + none on CPU."""
    dtype_name = config.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    quantization = config.quantization or ("4bit" if device.type == "cuda" else "none")
    return getattr(torch, dtype_name), quantization


def looks_like_path(model: str) -> bool:
    """A model string meant as a local path: starts with '.', '/' or '~', has more than one separator, or exists.

    Such a string is never looked up on the hub (``org/name`` has exactly one '/').
    """
    seps = model.count(os.sep) + (model.count(os.altsep) if os.altsep else 0)
    return model.startswith((".", "/", "~")) or seps > 1 or Path(model).expanduser().exists()


def local_revision(directory: Path, *, sample_bytes: int = 1 << 20) -> str:
    """A revision for an unpinned local checkpoint: ``local-`` + a short content fingerprint.

    Stored analyses are keyed by model name and revision, so weights replaced in the same directory
    must not reuse old drafts. Hashing 14 GB at every start would take a minute; the fingerprint
    covers the small files whole and, per weight file, its size plus its first and last MiB (the
    safetensors header and tensors at both ends), which changes whenever the weights do in practice.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with path.open("rb") as fh:
            if size <= 2 * sample_bytes:
                digest.update(fh.read())
            else:
                digest.update(fh.read(sample_bytes))
                fh.seek(size - sample_bytes)
                digest.update(fh.read(sample_bytes))
    return "local-" + digest.hexdigest()[:12]


def resolve_checkpoint(config: ModelConfig) -> tuple[Path, str, str | None]:
    """Local directory or hub id -> (directory, model name, revision)."""
    local = Path(config.model).expanduser()
    if looks_like_path(config.model):
        if not local.exists():
            raise ModelLoadError(
                f"model directory {local} not found; give an existing checkpoint directory "
                "(or a hub id such as ECOFRI/CXR-LLAVA-v2)"
            )
        if not local.is_dir():
            raise ModelLoadError(f"model path {local} is a file; give the checkpoint directory")
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} has no config.json; is it a CXR-LLAVA checkpoint directory?")
        # a checkpoint may name itself (the tiny demo model does); else the directory's name
        name = read_json(local / "config.json").get("cxr_cds_model_name") or local.resolve().name
        return local, str(name), config.revision or local_revision(local)
    if not _HUB_ID.match(config.model):
        raise ModelLoadError(f"model {config.model!r} is neither an existing directory nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            config.model, revision=config.revision, allow_patterns=HUB_PATTERNS,
            cache_dir=config.cache_dir, local_files_only=config.local_files_only,
        )
    except Exception as exc:  # offline, unknown repo, gated: all say the same thing to the operator
        raise ModelLoadError(
            f"cannot fetch {config.model}"
            + (f" at revision {config.revision}" if config.revision else "")
            + f" from the hub ({type(exc).__name__}); on a machine without internet, download it elsewhere "
            f"(`huggingface-cli download {config.model} --local-dir DIR`) and pass the directory DIR as the model"
        ) from exc
    path = Path(path)
    return path, config.model, config.revision or path.name


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path.name} is missing in {path.parent}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def read_published_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a published checkpoint (sharded with an index, or one model.safetensors)."""
    from safetensors import safe_open

    index_path = directory / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map") or {}
        files = sorted(set(weight_map.values()))
    elif (directory / "model.safetensors").is_file():
        files, weight_map = ["model.safetensors"], None
    else:
        raise ModelLoadError(
            f"{directory} has no model.safetensors.index.json or model.safetensors "
            "(only the safetensors weights are read; the pytorch_model-*.bin set is not)"
        )
    absent = [f for f in files if not (directory / f).is_file()]
    if absent:
        raise ModelLoadError(f"shard file(s) missing in {directory}: {', '.join(absent)}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            with safe_open(str(directory / name), framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
        except Exception as exc:
            raise ModelLoadError(f"cannot read shard {directory / name}: {exc}") from exc
    if weight_map is not None:
        not_found = [k for k, f in weight_map.items() if k not in tensors]
        if not_found:
            raise ModelLoadError(
                f"model.safetensors.index.json lists keys that its shards lack: {', '.join(not_found[:8])}")
    return tensors


def build_native_state_dict(directory: Path) -> tuple[CheckpointSpec, Any, dict[str, torch.Tensor]]:
    """Published directory -> (spec, VipLlavaConfig, native state dict), strictly checked both sides."""
    from transformers import VipLlavaForConditionalGeneration

    spec = CheckpointSpec.from_config(read_json(directory / "config.json"), where=str(directory / "config.json"))
    tensors = read_published_tensors(directory)
    check_published({k: tuple(t.shape) for k, t in tensors.items()}, spec, where=str(directory))
    vcfg = spec.vipllava_config()
    with torch.device("meta"):
        skeleton = VipLlavaForConditionalGeneration(vcfg)
    native = to_native(tensors, spec, NativeNames.of(skeleton))
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = sorted(set(expected) - set(native))
    unexpected = sorted(set(native) - set(expected))
    wrong = [k for k in expected if k in native and tuple(native[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ModelLoadError(
            "the mapped checkpoint does not fit this transformers version's VipLlavaForConditionalGeneration: "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}, wrong shape {wrong[:8]}"
        )
    return spec, vcfg, native


def _device_map(device: torch.device) -> dict[str, Any]:
    return {"": device.index if device.type == "cuda" and device.index is not None else device.type}


def load(config: ModelConfig) -> Engine:
    """Load a CXR-LLAVA checkpoint and return a ready Engine.

    Parameters
    ----------
    config : ModelConfig
        Local directory (published layout, or native layout from ``cxr-cds model convert``) or hub id.

    Returns
    -------
    Engine

    Raises
    ------
    ModelLoadError
        Directory or hub id not found (offline: names the directory to provide instead), missing shard,
        missing/unexpected/wrongly shaped tensor (named), unreadable tokenizer, bitsandbytes or torchao
        absent, an int4 group size that does not fit the checkpoint, int4 on CUDA in a dtype other than bfloat16.
    """
    from transformers import VipLlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar is noise in service logs and CLI output
    device = resolve_device(config.device)
    dtype, quantization = resolve_precision(config, device)
    directory, name, revision = resolve_checkpoint(config)
    cfg = read_json(directory / "config.json")
    group_size = None
    if quantization == "int4":
        group_size = int4_group_size(text_config(cfg), config.int4_group_size, device)
    qconfig = quantization_config(quantization, device=device, group_size=group_size or 128, dtype=dtype)
    common: dict[str, Any] = {"dtype": dtype, "device_map": _device_map(device)}
    if qconfig is not None:
        common["quantization_config"] = qconfig
    if config.attn_implementation:
        common["attn_implementation"] = config.attn_implementation

    if (directory / NATIVE_MARKER).is_file():
        marker = read_json(directory / NATIVE_MARKER)
        if marker.get("format") != NATIVE_FORMAT:
            raise ModelLoadError(f"{directory / NATIVE_MARKER}: format {marker.get('format')!r}, expected {NATIVE_FORMAT!r}")
        source = marker.get("source") or {}
        name, revision = source.get("name", name), source.get("revision", revision)
        pre = marker["image_preprocess_cfg"]
        try:
            model = VipLlavaForConditionalGeneration.from_pretrained(
                str(directory), local_files_only=True, use_safetensors=True, **common)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load the native checkpoint {directory}: {exc}") from exc
        image_size = int(model.config.vision_config.image_size)
        mean, std = float(pre["mean"]), float(pre["std"])
    elif cfg.get("model_type") == "CXR-LLAVA":
        spec, vcfg, native = build_native_state_dict(directory)
        model = VipLlavaForConditionalGeneration.from_pretrained(None, config=vcfg, state_dict=native, **common)
        del native
        image_size, mean, std = spec.image_size, spec.image_mean, spec.image_std
    else:
        raise ModelLoadError(
            f"{directory} is neither the published CXR-LLAVA layout (config.json model_type 'CXR-LLAVA') nor a "
            f"native checkpoint written by `cxr-cds model convert` (no {NATIVE_MARKER}); "
            f"found model_type {cfg.get('model_type')!r}"
        )
    model.eval()
    tok_cfg = read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
    # transformers' slow LlamaTokenizer defaults to legacy=True when the config does not say.
    tokenizer = ChatTokenizer(directory / "tokenizer.model", legacy=bool(tok_cfg.get("legacy", True)))
    identity = ModelIdentity(name=name, revision=revision, dtype=str(dtype).removeprefix("torch."),
                             quantization=quantization, kernel=kernel_name(quantization, device, group_size))
    compile_ = resolve_compile(config, device, model)
    log.info("loaded %s (revision %s) on %s as %s/%s (%s), decode %s%s", name, revision, device, identity.dtype,
             quantization, identity.kernel, config.decode, "+compile" if compile_ else "")
    return Engine(
        model, tokenizer, identity=identity, image_size=image_size, image_mean=mean, image_std=std,
        eos_token_id=tokenizer.eos_id, decode=config.decode, compile=compile_,
    )


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's sizes from a config.json of either layout (published ``llama``, native ``text_config``)."""
    from transformers import LlamaConfig

    text = cfg.get("llama") if cfg.get("model_type") == "CXR-LLAVA" else cfg.get("text_config")
    defaults = LlamaConfig()  # a native config.json may leave out values equal to the defaults
    text = text or {}
    return {"hidden_size": text.get("hidden_size", defaults.hidden_size),
            "intermediate_size": text.get("intermediate_size", defaults.intermediate_size)}


def resolve_compile(config: ModelConfig, device: torch.device, model) -> bool:
    """An explicit ``compile``, else: compile the static decode on CUDA unless the quantizer cannot be compiled."""
    if config.compile is not None:
        return config.compile
    quantizer = getattr(model, "hf_quantizer", None)
    return (config.decode == "static" and device.type == "cuda"
            and (quantizer is None or bool(getattr(quantizer, "is_compileable", False))))


def convert(source: str | Path, destination: str | Path, revision: str | None = None) -> Path:
    """Write the native checkpoint of a published one: ``save_pretrained`` + tokenizer + a source marker.

    Weights keep the published dtype; later loads skip the key mapping and give identical logits.

    Raises
    ------
    ModelLoadError
        As `load`, or the destination exists and is not empty.
    """
    from transformers import VipLlavaForConditionalGeneration

    directory, name, revision = resolve_checkpoint(ModelConfig(model=str(source), revision=revision))
    dst = Path(destination)
    if dst.exists() and any(dst.iterdir()):
        raise ModelLoadError(f"destination {dst} exists and is not empty; choose a new directory")
    spec, vcfg, native = build_native_state_dict(directory)
    dtype = next(iter(native.values())).dtype
    model = VipLlavaForConditionalGeneration.from_pretrained(None, config=vcfg, state_dict=native, dtype=dtype)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dst))
    for f in TOKENIZER_FILES:
        if (directory / f).is_file():
            shutil.copyfile(directory / f, dst / f)
    marker = {
        "format": NATIVE_FORMAT,
        "source": {"name": name, "revision": revision, "layout": "published ECOFRI CXR-LLAVA"},
        "image_preprocess_cfg": {"mean": spec.image_mean, "std": spec.image_std},
        "note": "VipLlavaForConditionalGeneration weights mapped from the published checkpoint by cxr-cds",
    }
    (dst / NATIVE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return dst
