"""A tiny random-weight checkpoint in the published ECOFRI CXR-LLAVA layout, made from nothing.

Same file names, config keys and tensor key names as ``ECOFRI/CXR-LLAVA-v2``; tiny dimensions; a
SentencePiece tokenizer trained here on a built-in corpus (byte fallback, so any text encodes).
Loaded by exactly the code that loads the real checkpoint. Its text is meaningless.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from model_runtime.checkpoint import CheckpointSpec

SYSTEM_PROMPT = (
    "You are a helpful radiologist. Try to interpret chest x ray image and answer to the question that user provides."
)
_CORPUS = [
    SYSTEM_PROMPT,
    "Write a radiologic report on the given chest radiograph, including information about atelectasis, "
    "cardiomegaly, consolidation, pulmonary edema, pleural effusion, and pneumothorax.",
    "What are the possible differential diagnoses for this patient?",
    "[INST] <<SYS>> <</SYS>> [/INST]",
    "Is there pneumothorax on this chest radiograph? Answer Yes or No.",
    "Is there cardiomegaly? Yes. Is there pleural effusion? No. Is there atelectasis? No.",
    "Yes. No. Yes, there is. No, there is not.",
    "The heart size is normal. The mediastinal contours are within normal limits.",
    "The lungs are clear. There is no focal consolidation, pleural effusion, or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "Moderate right pleural effusion. Bibasilar atelectasis. Mild pulmonary edema.",
    "Large right pneumothorax with mediastinal shift. Chest tube recommended.",
    "Right lower lobe consolidation, concerning for pneumonia. No pneumothorax.",
    "Endotracheal tube terminates 4 cm above the carina. Nasogastric tube in the stomach.",
    "No acute cardiopulmonary process. Impression: normal chest radiograph.",
    "Findings: Patchy opacity in the left lung base may reflect atelectasis or pneumonia.",
    "There is a 2 cm nodule in the right upper lobe. Follow-up CT is recommended.",
    "Age 67 years, male, emergency department, reason for exam: shortness of breath and fever.",
    "History: congestive heart failure, chronic obstructive pulmonary disease, hypertension.",
    "Frontal (PA) and lateral views of the chest. Comparison with the prior study of 2024-01-15.",
    "Degenerative changes of the thoracic spine. No displaced rib fracture.",
    "Interstitial markings are increased, consistent with mild interstitial edema.",
    "The cardiac silhouette is enlarged. Vascular congestion. Bilateral small effusions.",
]


def _train_tokenizer(vocab_size: int = 640) -> bytes:
    """Train a small byte-fallback BPE SentencePiece model, Llama-style (<unk>=0, <s>=1, </s>=2)."""
    import sentencepiece as spm

    lines = [line for _ in range(4) for line in _CORPUS]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def _tiny_config(vocab_size: int) -> dict:
    """config.json in the published layout (leftover keys included, as in the real one)."""
    return {
        "architectures": ["CXRLLAVAModel"],
        "auto_map": {
            "AutoConfig": "configuration_CXR_LLAVA.CXRLLAVAConfig",
            "AutoModel": "modeling_CXR_LLAVA.CXRLLAVAModel",
        },
        "model_type": "CXR-LLAVA",
        # not in the published config: names the model on every output (Device, card, CLI)
        "cxr_cds_model_name": "cxr-cds/tiny-random-cxr-llava (demo: random weights)",
        "clip_vision_cfg": {"image_size": 64, "layers": 2, "patch_size": 16, "width": 64, "head_width": 32},
        "clip_embed_dim": 16,
        "clip_quick_gelu": False,
        "image_preprocess_cfg": {"mean": 0.5518136078431373, "std": 0.3821719215686275},
        "mm_projector_dim": 64,
        "clip_vision_tower_dtype": "bf16",
        "llama_model_dtype": "bf16",
        "mm_projector_dtype": "fp32",
        "image_aspect_ratio": "original",
        "freeze_mm_mlp_adapter": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0",
        "llama": {
            "architectures": ["LlamaForCausalLM"],
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 192,   # a multiple of 64: bitsandbytes' packed 4-bit CPU path (AVX512-BF16) needs N % 32 == 0 and whole 64-blocks
            "max_position_embeddings": 2048,   # the original's context length: room for the 512-token cap
            "model_type": "llama",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 4,
            "pad_token_id": 0,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "transformers_version": "4.31.0",
            "use_cache": True,
            "vocab_size": vocab_size,
        },
    }


def _random_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random weights with scales that keep activations O(1) and logits well separated (no near-ties)."""
    if key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "layernorm.weight",
                     "norm.weight")):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if key.endswith(("bias", "class_embedding")) or key.endswith("positional_embedding"):
        return 0.1 * torch.randn(shape, generator=gen)
    if key == "llama.embed_tokens.weight":
        return torch.randn(shape, generator=gen)
    fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
    scale = 4.0 if key == "lm_head.weight" else 1.0  # spread logits so greedy choices are far from ties
    return scale * torch.randn(shape, generator=gen) / fan_in ** 0.5


def init_tiny(directory: str | Path, seed: int = 0, shards: int = 3) -> Path:
    """Write a tiny random-weight CXR-LLAVA checkpoint in the published layout.

    Parameters
    ----------
    directory : path
        Created if needed; existing checkpoint files in it are overwritten.
    seed : int
        Same seed, same bytes (weights are drawn from a seeded generator; the tokenizer's corpus is fixed).
    shards : int
        Number of ``model-0000N-of-0000M.safetensors`` files (3 as in the released checkpoint).

    Returns
    -------
    Path
        The directory.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sp_model = _train_tokenizer()
    import sentencepiece as spm

    vocab_size = spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()
    config = _tiny_config(vocab_size)
    spec = CheckpointSpec.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    # Stored in bf16 like the released weights.
    tensors = {k: _random_tensor(k, shape, gen).to(torch.bfloat16) for k, shape in spec.published_shapes().items()}

    keys = list(tensors)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for n in range(shards):
        name = f"model-{n + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in keys[n * per:(n + 1) * per]}
        save_file(part, str(out / name), metadata={"format": "pt"})
        for k, t in part.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json",
                {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                 "transformers_version": "4.31.0"})
    (out / "tokenizer.model").write_bytes(sp_model)

    def added(content: str) -> dict:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False}

    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": added("<s>"),
        "clean_up_tokenization_spaces": False, "eos_token": added("</s>"), "legacy": False,
        "model_max_length": 512, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", "unk_token": added("<unk>"),
    })
    _write_json(out / "special_tokens_map.json",
                {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"})
    _write_json(out / "added_tokens.json", {})
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
