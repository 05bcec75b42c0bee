"""The published ECOFRI CXR-LLAVA checkpoint layout and its exact mapping onto VipLlavaForConditionalGeneration.

Pure functions on configs and tensor dicts; reading files is `loader.py`'s job. Facts from
reference/CXR_LLAVA.md ("Checkpoint layout", "Exact mapping onto stock transformers").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from model_runtime.errors import ModelLoadError

PUBLISHED_MODEL_TYPE = "CXR-LLAVA"
NATIVE_MARKER = "cxr_cds_native.json"     # written by `cxr-cds model convert` next to the native checkpoint
NATIVE_FORMAT = "cxr-cds-native/1"

# Keys of a transformers-4.31 LlamaConfig dump that are bookkeeping, not architecture.
_LLAMA_IGNORED = {"architectures", "_name_or_path", "torch_dtype", "dtype", "transformers_version", "model_type"}


@dataclass(frozen=True)
class CheckpointSpec:
    """Architecture facts read from a published ``config.json`` (OpenCLIP defaults where keys are absent)."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_head_width: int
    vision_mlp_width: int
    clip_embed_dim: int
    quick_gelu: bool
    image_mean: float
    image_std: float
    llama: dict[str, Any] = field(repr=False)

    @property
    def vision_heads(self) -> int:
        return self.vision_width // self.vision_head_width

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def hidden_size(self) -> int:
        return int(self.llama["hidden_size"])

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "config.json") -> "CheckpointSpec":
        """Read the published config; raise ModelLoadError naming any missing or inconsistent key."""
        if cfg.get("model_type") != PUBLISHED_MODEL_TYPE:
            raise ModelLoadError(
                f"{where}: model_type is {cfg.get('model_type')!r}, expected {PUBLISHED_MODEL_TYPE!r} "
                "(the published ECOFRI/CXR-LLAVA layout)"
            )
        missing = [k for k in ("clip_vision_cfg", "llama") if not isinstance(cfg.get(k), dict)]
        if missing:
            raise ModelLoadError(f"{where}: missing {', '.join(missing)} (expected dicts in the published layout)")
        vis = cfg["clip_vision_cfg"]
        need = [k for k in ("image_size", "layers", "patch_size", "width") if k not in vis]
        if need:
            raise ModelLoadError(f"{where}: clip_vision_cfg lacks {', '.join(need)}")
        width = int(vis["width"])
        head_width = int(vis.get("head_width", 64))
        if width % head_width:
            raise ModelLoadError(f"{where}: clip_vision_cfg width {width} is not a multiple of head_width {head_width}")
        image_size, patch = int(vis["image_size"]), int(vis["patch_size"])
        if image_size % patch:
            raise ModelLoadError(f"{where}: image_size {image_size} is not a multiple of patch_size {patch}")
        llama = {k: v for k, v in cfg["llama"].items() if k not in _LLAMA_IGNORED}
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if k not in llama:
                raise ModelLoadError(f"{where}: llama config lacks {k}")
        if int(cfg.get("mm_projector_dim", width)) != width:
            raise ModelLoadError(
                f"{where}: mm_projector_dim {cfg.get('mm_projector_dim')} differs from the vision width {width}; "
                "this runtime maps only the single-Linear projector of CXR-LLAVA-v2"
            )
        pre = cfg.get("image_preprocess_cfg") or {}
        return cls(
            image_size=image_size,
            patch_size=patch,
            vision_width=width,
            vision_layers=int(vis["layers"]),
            vision_head_width=head_width,
            vision_mlp_width=int(round(width * float(vis.get("mlp_ratio", 4.0)))),
            clip_embed_dim=int(cfg.get("clip_embed_dim", 128)),
            quick_gelu=bool(cfg.get("clip_quick_gelu", False)),
            image_mean=float(pre.get("mean", 0.5518136078431373)),
            image_std=float(pre.get("std", 0.3821719215686275)),
            llama=llama,
        )

    def published_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor key of the published checkpoint with its shape, in the published order."""
        w, m, n = self.vision_width, self.vision_mlp_width, (self.image_size // self.patch_size) ** 2 + 1
        h, v, inter = self.hidden_size, int(self.llama["vocab_size"]), int(self.llama["intermediate_size"])
        heads = int(self.llama["num_attention_heads"])
        kv = int(self.llama.get("num_key_value_heads") or heads)
        head_dim = int(self.llama.get("head_dim") or h // heads)
        s: dict[str, tuple[int, ...]] = {
            "vision_tower.class_embedding": (w,),
            "vision_tower.positional_embedding": (n, w),
            "vision_tower.proj": (w, self.clip_embed_dim),
            "vision_tower.conv1.weight": (w, 1, self.patch_size, self.patch_size),
            "vision_tower.ln_pre.weight": (w,), "vision_tower.ln_pre.bias": (w,),
        }
        for i in range(self.vision_layers):
            b = f"vision_tower.transformer.resblocks.{i}"
            s.update({
                f"{b}.ln_1.weight": (w,), f"{b}.ln_1.bias": (w,),
                f"{b}.attn.in_proj_weight": (3 * w, w), f"{b}.attn.in_proj_bias": (3 * w,),
                f"{b}.attn.out_proj.weight": (w, w), f"{b}.attn.out_proj.bias": (w,),
                f"{b}.ln_2.weight": (w,), f"{b}.ln_2.bias": (w,),
                f"{b}.mlp.c_fc.weight": (m, w), f"{b}.mlp.c_fc.bias": (m,),
                f"{b}.mlp.c_proj.weight": (w, m), f"{b}.mlp.c_proj.bias": (w,),
            })
        s.update({
            "vision_tower.ln_post.weight": (w,), "vision_tower.ln_post.bias": (w,),
            "mm_projector.weight": (h, w), "mm_projector.bias": (h,),
            "llama.embed_tokens.weight": (v, h),
        })
        for j in range(int(self.llama["num_hidden_layers"])):
            b = f"llama.layers.{j}"
            s.update({
                f"{b}.self_attn.q_proj.weight": (heads * head_dim, h),
                f"{b}.self_attn.k_proj.weight": (kv * head_dim, h),
                f"{b}.self_attn.v_proj.weight": (kv * head_dim, h),
                f"{b}.self_attn.o_proj.weight": (h, heads * head_dim),
                f"{b}.mlp.gate_proj.weight": (inter, h), f"{b}.mlp.up_proj.weight": (inter, h),
                f"{b}.mlp.down_proj.weight": (h, inter),
                f"{b}.input_layernorm.weight": (h,), f"{b}.post_attention_layernorm.weight": (h,),
            })
        s.update({"llama.norm.weight": (h,), "lm_head.weight": (v, h)})
        return s

    def vipllava_config(self):
        """The `VipLlavaConfig` that reproduces this checkpoint exactly (features: last layer, ln_post, Linear)."""
        from transformers import CLIPVisionConfig, LlamaConfig, VipLlavaConfig

        llama = dict(self.llama)
        # transformers-4.31 dumps may lack these; the defaults then apply (reference: "Language model").
        llama.setdefault("rope_theta", 10000.0)
        llama.setdefault("attention_bias", False)
        llama.setdefault("attention_dropout", 0.0)
        if llama.get("rope_scaling") is None:
            llama.pop("rope_scaling", None)
        llama["tie_word_embeddings"] = False
        text_config = LlamaConfig(**llama)
        vision_config = CLIPVisionConfig(
            hidden_size=self.vision_width,
            intermediate_size=self.vision_mlp_width,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            num_channels=1,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="quick_gelu" if self.quick_gelu else "gelu",
            layer_norm_eps=1e-5,
            projection_dim=self.clip_embed_dim,
        )
        config = VipLlavaConfig(
            vision_config=vision_config,
            text_config=text_config,
            # The image embeddings are spliced in by the engine (inputs_embeds), so no vocabulary id is
            # reserved; vocab_size is out of range and can never collide with a prompt token.
            image_token_index=int(self.llama["vocab_size"]),
            projector_hidden_act="linear",
            projector_layernorm_eps=1e-5,
            image_seq_length=self.image_tokens,
            tie_word_embeddings=False,
        )
        # Older transformers 5.x name the field `vision_feature_layers`; newer ones alias it. Set both so the
        # projector is built for ONE feature layer (the last) on either.
        for attr in ("vision_feature_layer", "vision_feature_layers"):
            setattr(config, attr, -1)
        return config


def check_published(tensors: Mapping[str, tuple[int, ...]], spec: CheckpointSpec, where: str) -> None:
    """Strict check of a published checkpoint's keys and shapes (``{key: shape}``).

    Raises
    ------
    ModelLoadError
        Naming the missing keys, the unexpected keys and the keys with a wrong shape.
    """
    expected = spec.published_shapes()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {tuple(tensors[k])} (expected {expected[k]})"
             for k in expected if k in tensors and tuple(tensors[k]) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_few(wrong)}")
    if problems:
        raise ModelLoadError(f"{where} does not match its config.json: " + "; ".join(problems))


def _few(items: list[str], n: int = 8) -> str:
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


@dataclass(frozen=True)
class NativeNames:
    """Where the parts live in this transformers version's VipLlavaForConditionalGeneration.

    Module paths moved between transformers 4.x and 5.x (e.g. ``vision_tower.vision_model.*`` ->
    ``vision_tower.*``), so they are found on the model instead of hard-coded.
    """

    vision: str        # holds embeddings, pre_layrnorm, encoder, post_layernorm
    projector: str     # holds projector_layernorm, linear_1, linear_2
    language: str      # holds embed_tokens, layers, norm
    lm_head: str

    @classmethod
    def of(cls, model: torch.nn.Module) -> "NativeNames":
        vision = projector = language = None
        for name, module in model.named_modules():
            if vision is None and hasattr(module, "pre_layrnorm") and hasattr(module, "encoder"):
                vision = name
            elif projector is None and hasattr(module, "projector_layernorm") and hasattr(module, "linear_2"):
                projector = name
            elif language is None and hasattr(module, "embed_tokens") and hasattr(module, "layers"):
                language = name
        head = model.get_output_embeddings()
        lm_head = next((n for n, m in model.named_modules() if m is head), None)
        if None in (vision, projector, language, lm_head):
            raise ModelLoadError(
                "this transformers version's VipLlavaForConditionalGeneration has an unexpected module layout "
                f"(vision={vision}, projector={projector}, language={language}, lm_head={lm_head})"
            )
        return cls(vision, projector, language, lm_head)


def to_native(published: Mapping[str, torch.Tensor], spec: CheckpointSpec, names: NativeNames) -> dict[str, torch.Tensor]:
    """Published tensors -> the native model's state dict (``proj`` dropped; projector ``linear_2`` = identity).

    ``ln_post`` becomes the projector's LayerNorm (applied to all patch tokens, as in the original) and
    also fills the CLIP ``post_layernorm``, which only touches the unused pooled output.
    """
    V, P, L = names.vision, names.projector, names.language
    out: dict[str, torch.Tensor] = {}
    for key, t in published.items():
        if key == "vision_tower.proj":
            continue  # OpenCLIP's contrastive projection: not on the path to the language model
        if key.startswith("llama."):
            out[f"{L}.{key[len('llama.'):]}"] = t
        elif key == "lm_head.weight":
            out[f"{names.lm_head}.weight"] = t
        elif key.startswith("mm_projector."):
            out[f"{P}.linear_1.{key.rsplit('.', 1)[1]}"] = t
        elif key.startswith("vision_tower.ln_post."):
            part = key.rsplit(".", 1)[1]
            out[f"{P}.projector_layernorm.{part}"] = t
            out[f"{V}.post_layernorm.{part}"] = t.clone()  # a copy: save_pretrained refuses shared storage
        elif key == "vision_tower.conv1.weight":
            out[f"{V}.embeddings.patch_embedding.weight"] = t
        elif key == "vision_tower.class_embedding":
            out[f"{V}.embeddings.class_embedding"] = t
        elif key == "vision_tower.positional_embedding":
            out[f"{V}.embeddings.position_embedding.weight"] = t
        elif key.startswith("vision_tower.ln_pre."):
            out[f"{V}.pre_layrnorm.{key.rsplit('.', 1)[1]}"] = t
        elif key.startswith("vision_tower.transformer.resblocks."):
            i, rest = key[len("vision_tower.transformer.resblocks."):].split(".", 1)
            b = f"{V}.encoder.layers.{i}"
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                part = "weight" if rest.endswith("weight") else "bias"
                q, k, v = t.chunk(3, dim=0)  # rows in q, k, v order
                out[f"{b}.self_attn.q_proj.{part}"] = q.contiguous()
                out[f"{b}.self_attn.k_proj.{part}"] = k.contiguous()
                out[f"{b}.self_attn.v_proj.{part}"] = v.contiguous()
            else:
                mapped = _VISION_BLOCK.get(rest)
                if mapped is None:
                    raise ModelLoadError(f"unexpected key {key} in the published checkpoint")
                out[f"{b}.{mapped}"] = t
        else:
            raise ModelLoadError(f"unexpected key {key} in the published checkpoint")
    ref = published.get("mm_projector.weight")
    h = spec.hidden_size
    dtype = ref.dtype if ref is not None else torch.float32
    out[f"{P}.linear_2.weight"] = torch.eye(h, dtype=dtype)   # (H, H) identity: exact, +H*H parameters
    out[f"{P}.linear_2.bias"] = torch.zeros(h, dtype=dtype)
    return out


_VISION_BLOCK = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}


def to_published(native: Mapping[str, torch.Tensor], spec: CheckpointSpec, names: NativeNames) -> dict[str, torch.Tensor]:
    """Native state dict -> published tensors (inverse of `to_native`, without the dropped ``proj``)."""
    V, P, L = names.vision, names.projector, names.language
    out: dict[str, torch.Tensor] = {}
    inv_block = {v: k for k, v in _VISION_BLOCK.items()}
    out["vision_tower.class_embedding"] = native[f"{V}.embeddings.class_embedding"]
    out["vision_tower.positional_embedding"] = native[f"{V}.embeddings.position_embedding.weight"]
    out["vision_tower.conv1.weight"] = native[f"{V}.embeddings.patch_embedding.weight"]
    for part in ("weight", "bias"):
        out[f"vision_tower.ln_pre.{part}"] = native[f"{V}.pre_layrnorm.{part}"]
    for i in range(spec.vision_layers):
        b, pb = f"{V}.encoder.layers.{i}", f"vision_tower.transformer.resblocks.{i}"
        for part in ("weight", "bias"):
            out[f"{pb}.attn.in_proj_{part}"] = torch.cat(
                [native[f"{b}.self_attn.{x}_proj.{part}"] for x in "qkv"], dim=0)
        for nat, pub in inv_block.items():
            out[f"{pb}.{pub}"] = native[f"{b}.{nat}"]
    for part in ("weight", "bias"):
        out[f"vision_tower.ln_post.{part}"] = native[f"{P}.projector_layernorm.{part}"]
        out[f"mm_projector.{part}"] = native[f"{P}.linear_1.{part}"]
    for key, t in native.items():
        if key.startswith(L + "."):
            out["llama." + key[len(L) + 1:]] = t
    out["lm_head.weight"] = native[f"{names.lm_head}.weight"]
    return out
