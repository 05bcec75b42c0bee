"""`export_decoder`: the language model of a published CXR-LLAVA checkpoint as a stock LlamaForCausalLM.

The directory it writes (config.json, safetensors shards + index, the checkpoint's own tokenizer files,
generation_config.json) is what a stock vLLM server serves for the ``vllm`` backend
(``vllm serve DST --enable-prompt-embeds``): our process keeps the vision tower, the projector and the
token embeddings, and sends the decoder the spliced input sequence as embeddings.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from model_runtime.checkpoint import NativeNames, check_published, to_native
from model_runtime.errors import ModelLoadError
from model_runtime.loader import TOKENIZER_FILES, read_json, read_published_tensors, resolve_checkpoint
from model_runtime.types import ModelConfig

# Written next to the decoder: where it came from (the backend names it in its identity).
DECODER_MARKER = "cxr_cds_decoder.json"
DECODER_FORMAT = "cxr-cds-decoder/1"
# LlamaForCausalLM's own module names: `to_native` maps "llama.*" under `language` and lm_head to `lm_head`.
_LLAMA_NAMES = NativeNames(vision="vision_tower", projector="multi_modal_projector", language="model",
                           lm_head="lm_head")
SHARD_BYTES = 4 << 30  # 4 GiB per safetensors shard (the 7B decoder in bf16: 4 shards)


def export_decoder(source: str | Path, destination: str | Path, revision: str | None = None) -> Path:
    """Write the decoder of a published CXR-LLAVA checkpoint as a LlamaForCausalLM checkpoint.

    Weights keep the published dtype and are the very tensors the in-process engine uses (the key
    mapping is `checkpoint.to_native`'s, so both backends run the same decoder).

    Parameters
    ----------
    source : str or Path
        A published-layout directory (or hub id; see `ModelConfig.model`).
    destination : str or Path
        A new or empty directory.
    revision : str, optional
        Hub revision to pin when ``source`` is a hub id.

    Returns
    -------
    Path
        ``destination``.

    Raises
    ------
    ModelLoadError
        The source is not a published CXR-LLAVA checkpoint, a tensor is missing or mis-shaped, or the
        destination exists and is not empty.
    """
    from safetensors.torch import save_file

    from model_runtime.checkpoint import CheckpointSpec

    directory, name, revision = resolve_checkpoint(ModelConfig(model=str(source), revision=revision))
    dst = Path(destination)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ModelLoadError(f"destination {dst} exists and is not an empty directory; choose a new directory")
    cfg = read_json(directory / "config.json")
    if cfg.get("model_type") != "CXR-LLAVA":
        raise ModelLoadError(
            f"{directory} is not the published CXR-LLAVA layout (config.json model_type "
            f"{cfg.get('model_type')!r}); export-decoder reads the published checkpoint, not a converted one")
    spec = CheckpointSpec.from_config(cfg, where=str(directory / "config.json"))
    published = read_published_tensors(directory)
    check_published({k: tuple(t.shape) for k, t in published.items()}, spec, where=str(directory))
    # Only the decoder's tensors go through the mapping (the vision tower stays with our process).
    decoder = {k: t for k, t in published.items() if k.startswith("llama.") or k == "lm_head.weight"}
    del published
    native = to_native(decoder, spec, _LLAMA_NAMES)
    tensors = {k: t.contiguous() for k, t in native.items() if k.startswith(("model.", "lm_head."))}
    dtype = next(iter(tensors.values())).dtype

    text_config = spec.vipllava_config().text_config
    config = text_config.to_dict()
    config.update({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "torch_dtype": str(dtype).removeprefix("torch."), "tie_word_embeddings": False})
    config.pop("dtype", None)
    config.pop("transformers_version", None)

    dst.mkdir(parents=True, exist_ok=True)
    shards = _shards(tensors)
    weight_map: dict[str, str] = {}
    for i, keys in enumerate(shards, 1):
        file = ("model.safetensors" if len(shards) == 1
                else f"model-{i:05d}-of-{len(shards):05d}.safetensors")
        save_file({k: tensors[k] for k in keys}, str(dst / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        _write_json(dst / "model.safetensors.index.json",
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(dst / "config.json", config)
    generation = {"bos_token_id": config.get("bos_token_id", 1), "eos_token_id": config.get("eos_token_id", 2),
                  "pad_token_id": config.get("pad_token_id", 0)}
    if (directory / "generation_config.json").is_file():
        generation = read_json(directory / "generation_config.json")
    _write_json(dst / "generation_config.json", generation)
    copied = [f for f in TOKENIZER_FILES if (directory / f).is_file()]
    if "tokenizer.model" not in copied:
        raise ModelLoadError(f"{directory} has no tokenizer.model; the decoder export needs the checkpoint's tokenizer")
    for f in copied:
        shutil.copyfile(directory / f, dst / f)
    _write_json(dst / DECODER_MARKER, {
        "format": DECODER_FORMAT,
        "source": {"name": name, "revision": revision, "layout": "published ECOFRI CXR-LLAVA"},
        "hidden_size": spec.hidden_size,
        "image_tokens": spec.image_tokens,
        "note": "LlamaForCausalLM decoder of CXR-LLAVA exported by `cxr-cds model export-decoder`; serve with "
                "`vllm serve DIR --enable-prompt-embeds` and open the vllm backend on the same source checkpoint",
    })
    return dst


def _shards(tensors: dict[str, torch.Tensor]) -> list[list[str]]:
    """Keys in order, cut into groups of at most SHARD_BYTES (one group for small models)."""
    groups: list[list[str]] = [[]]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    return groups


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
