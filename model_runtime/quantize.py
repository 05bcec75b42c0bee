"""Weight quantization of the language model: which library, which kernel, which layers.

- ``8bit`` / ``4bit``: bitsandbytes (LLM.int8 / NF4 with double quantization): the smallest memory on the
  widest hardware, but its kernels dequantize every token (slow decoding at batch 1).
- ``int4``: torchao int4 weight-only, grouped asymmetric (one bf16 scale and zero point per
  `group_size` input channels). On CUDA the weights are packed for the tinygemm kernel
  (``aten._weight_int4pack_mm``, bfloat16 only), which reads a quarter of bf16's bytes per token and
  works with the static cache, torch.compile and CUDA graphs. On CPU the same setting packs for
  ``aten._weight_int4pack_mm_for_cpu`` (torchao's Int4OpaqueTensor, a prototype API in torchao 0.18).

Every path keeps the vision tower, the projector and ``lm_head`` unquantized and goes through
``from_pretrained(..., quantization_config=...)`` in `loader.load`, for both checkpoint layouts.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from model_runtime.errors import ModelLoadError
from model_runtime.types import INT4_GROUP_SIZES

log = logging.getLogger(__name__)

# Kept unquantized: the vision tower, the projector and lm_head. Short names for transformers versions
# that match by substring or at the top level; "model."-prefixed ones for 5.2x, which matches prefixes.
SKIP_QUANTIZATION = ["vision_tower", "multi_modal_projector", "lm_head",
                     "model.vision_tower", "model.multi_modal_projector"]
# Group sizes tried, largest first, when none is given (the CPU kernel stops at 128).
INT4_DEFAULT_GROUP_SIZES = (128, 64, 32)
INT4_CPU_GROUP_SIZES = (32, 64, 128)


def bitsandbytes():
    """Import bitsandbytes, or say what to install."""
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ModelLoadError(
            "8bit/4bit quantization needs bitsandbytes: `pip install 'bitsandbytes>=0.45'` "
            "(or choose quantization 'none')"
        ) from exc
    return bnb


def torchao():
    """Import torchao, or say what to install."""
    try:
        import torchao as ao
    except ImportError as exc:
        raise ModelLoadError(
            "int4 quantization needs torchao: `pip install 'torchao>=0.18,<0.19'` "
            "(or choose quantization '4bit', bitsandbytes NF4)"
        ) from exc
    return ao


def quantized_input_sizes(text_config: Mapping[str, Any]) -> dict[str, int]:
    """Input channels of each quantized Linear of a Llama text config: the grouping runs along them."""
    return {"q/k/v/o_proj, gate/up_proj": int(text_config["hidden_size"]),
            "down_proj": int(text_config["intermediate_size"])}


def int4_group_size(text_config: Mapping[str, Any], requested: int | None, device: torch.device) -> int:
    """The int4 group size: `requested` if it divides every quantized layer's input, else the default.

    Default: the largest of 128, 64, 32 that divides them all (a layer it does not divide would be
    left unquantized by torchao without a word, so that is refused instead).

    Raises
    ------
    ModelLoadError
        The requested size does not divide a layer's input or the CPU kernel does not take it; or no
        default fits.
    """
    sizes = quantized_input_sizes(text_config)
    allowed = INT4_CPU_GROUP_SIZES if device.type == "cpu" else INT4_GROUP_SIZES
    if requested is not None:
        if requested not in allowed:
            raise ModelLoadError(
                f"int4 group size {requested} is not supported on {device.type}; use one of "
                f"{', '.join(map(str, allowed))}")
        bad = {name: n for name, n in sizes.items() if n % requested}
        if bad:
            raise ModelLoadError(
                f"int4 group size {requested} does not divide the input size of "
                + ", ".join(f"{name} ({n})" for name, n in bad.items())
                + "; choose a group size that divides it (or leave it unset)")
        return requested
    for g in INT4_DEFAULT_GROUP_SIZES:
        if all(n % g == 0 for n in sizes.values()):
            return g
    raise ModelLoadError(
        "int4 needs the quantized layers' input sizes to be multiples of 32; this checkpoint has "
        + ", ".join(f"{name} {n}" for name, n in sizes.items()) + "; use quantization '4bit' or 'none'")


def int4_kernel(device: torch.device, group_size: int) -> str:
    """The identity's kernel name of torchao int4 on `device`."""
    return f"torchao-int4-g{group_size}-{'tinygemm' if device.type == 'cuda' else 'cpu'}"


def kernel_name(quantization: str, device: torch.device, group_size: int | None = None) -> str:
    """What computes the quantized layers' matmuls (recorded in the model identity)."""
    if quantization == "int4":
        if group_size is None:
            raise ValueError("int4 needs its group size")
        return int4_kernel(device, group_size)
    return {"none": "torch", "8bit": "bitsandbytes-int8", "4bit": "bitsandbytes-nf4"}[quantization]


def quantization_config(quantization: str, *, device: torch.device | str = "cuda", group_size: int = 128,
                        dtype: torch.dtype = torch.bfloat16):
    """The transformers quantization config for the language model, or None for ``none``.

    4bit: NF4 + double quantization, computing in bfloat16 whatever the model dtype (the original runs in
    bf16; a float32 model on CPU would otherwise make bitsandbytes dequantize to float32 for every matmul).
    int4: a TorchAoConfig with torchao's int4 weight-only config for `device` (tinygemm packing on CUDA,
    which needs `dtype` bfloat16; the CPU packing on CPU) and `group_size`. torchao's global inductor
    settings (coordinate-descent tuning) are left alone: they would change every later compile in the
    process and lengthen it. The vision tower, the projector and lm_head stay unquantized.

    Raises
    ------
    ModelLoadError
        The library is not installed, or int4 on CUDA with a dtype other than bfloat16.
    """
    if quantization == "none":
        return None
    if quantization == "int4":
        return _torchao_int4(torch.device(device), group_size, dtype)
    bitsandbytes()
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_QUANTIZATION)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=SKIP_QUANTIZATION,
    )


def _torchao_int4(device: torch.device, group_size: int, dtype: torch.dtype):
    torchao()
    from transformers import TorchAoConfig

    if device.type == "cuda":
        if dtype != torch.bfloat16:
            raise ModelLoadError(
                f"quantization 'int4' on CUDA runs torchao's tinygemm kernel, which takes bfloat16 only; "
                f"got dtype {str(dtype).removeprefix('torch.')}: set dtype bfloat16 (or leave it unset)")
        from torchao.quantization import Int4WeightOnlyConfig

        ao_config = Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d",
                                         set_inductor_config=False)
    elif device.type == "cpu":
        try:
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        except ImportError as exc:
            raise ModelLoadError(
                "quantization 'int4' on CPU needs torchao's CPU int4 layout (PrototypeInt4WeightOnlyConfig, "
                "torchao 0.18): `pip install 'torchao>=0.18,<0.19'`, or use quantization 'none' on CPU") from exc
        ao_config = PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)
    else:
        raise ModelLoadError(f"quantization 'int4' runs on cuda or cpu, not {device.type}; use quantization 'none'")
    return TorchAoConfig(ao_config, modules_to_not_convert=list(SKIP_QUANTIZATION))
