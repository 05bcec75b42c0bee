"""The published layout: tiny checkpoint files, strict key/shape checks, the key mapping round trip."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_runtime import GenerationRequest, GenerationSettings, ModelConfig, ModelLoadError, convert, init_tiny, load
from model_runtime.checkpoint import CheckpointSpec, NativeNames, to_native, to_published
from model_runtime.loader import build_native_state_dict, read_published_tensors

PUBLISHED_FILES = {
    "config.json", "generation_config.json", "model.safetensors.index.json", "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "tokenizer.model",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
}


def _copy(src, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_tiny_checkpoint_has_the_published_files_and_config_keys(tiny_model_dir):
    assert {p.name for p in tiny_model_dir.iterdir()} == PUBLISHED_FILES
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "CXR-LLAVA" and cfg["architectures"] == ["CXRLLAVAModel"]
    assert cfg["clip_quick_gelu"] is False and set(cfg["image_preprocess_cfg"]) == {"mean", "std"}
    assert {"clip_vision_cfg", "clip_embed_dim", "mm_projector_dim", "llama"} <= set(cfg)
    assert "rope_theta" not in cfg["llama"]  # a transformers-4.31-era dump, as the real one
    assert json.loads((tiny_model_dir / "tokenizer_config.json").read_text())["legacy"] is False


def test_tiny_checkpoint_uses_the_published_tensor_names(tiny_model_dir):
    tensors = read_published_tensors(tiny_model_dir)
    spec = CheckpointSpec.from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    assert set(tensors) == set(spec.published_shapes())
    assert tensors["vision_tower.conv1.weight"].shape == (64, 1, 16, 16)          # 1 channel, no bias
    assert tensors["vision_tower.positional_embedding"].shape == (17, 64)         # 16 patches + class
    assert tensors["vision_tower.transformer.resblocks.1.attn.in_proj_weight"].shape == (192, 64)
    assert tensors["mm_projector.weight"].shape == (64, 64) and "lm_head.weight" in tensors
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert spec.image_tokens == 16


def test_init_tiny_is_deterministic_per_seed(tmp_path):
    a, b, c = init_tiny(tmp_path / "a", seed=1), init_tiny(tmp_path / "b", seed=1), init_tiny(tmp_path / "c", seed=2)

    def digest(d, name):
        return hashlib.sha256((d / name).read_bytes()).hexdigest()

    for name in PUBLISHED_FILES:
        assert digest(a, name) == digest(b, name), name
    assert digest(a, "model-00001-of-00003.safetensors") != digest(c, "model-00001-of-00003.safetensors")
    assert digest(a, "tokenizer.model") == digest(c, "tokenizer.model")


def test_key_mapping_round_trip_has_no_missing_or_unexpected_keys(tiny_model_dir):
    spec, vcfg, native = build_native_state_dict(tiny_model_dir)
    from transformers import VipLlavaForConditionalGeneration

    with torch.device("meta"):
        skeleton = VipLlavaForConditionalGeneration(vcfg)
    names = NativeNames.of(skeleton)
    assert set(native) == set(skeleton.state_dict())
    published = read_published_tensors(tiny_model_dir)
    back = to_published(native, spec, names)
    assert set(back) == set(published) - {"vision_tower.proj"}  # proj is unused by the model: dropped
    for key, t in back.items():
        assert torch.equal(t, published[key]), key
    # The projector's second Linear is an exact identity.
    assert torch.equal(native[f"{names.projector}.linear_2.weight"], torch.eye(64, dtype=torch.bfloat16))
    assert not native[f"{names.projector}.linear_2.bias"].any()


def test_missing_shard_is_named(tiny_model_dir, tmp_path):
    ckpt = _copy(tiny_model_dir, tmp_path)
    (ckpt / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"shard file\(s\) missing in .*ckpt: model-00002-of-00003.safetensors"):
        load(ModelConfig(model=str(ckpt), device="cpu"))


def test_wrong_shape_is_named(tiny_model_dir, tmp_path):
    ckpt = _copy(tiny_model_dir, tmp_path)
    shard = ckpt / "model-00003-of-00003.safetensors"
    tensors = load_file(str(shard))
    tensors["lm_head.weight"] = tensors["lm_head.weight"][:, :32].contiguous()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"wrong shapes: lm_head.weight \(640, 32\) \(expected \(640, 64\)\)"):
        load(ModelConfig(model=str(ckpt), device="cpu"))


def test_missing_and_unexpected_keys_are_named(tiny_model_dir, tmp_path):
    ckpt = _copy(tiny_model_dir, tmp_path)
    shard = ckpt / "model-00001-of-00003.safetensors"
    tensors = load_file(str(shard))
    tensors["vision_tower.extra_scale"] = tensors.pop("vision_tower.ln_pre.bias")
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    index["weight_map"]["vision_tower.extra_scale"] = index["weight_map"].pop("vision_tower.ln_pre.bias")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"missing keys: vision_tower.ln_pre.bias; "
                                             r"unexpected keys: vision_tower.extra_scale"):
        load(ModelConfig(model=str(ckpt), device="cpu"))


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match=r"has no config.json; is it a CXR-LLAVA checkpoint directory\?"):
        load(ModelConfig(model=str(tmp_path), device="cpu"))


def test_other_model_type_is_rejected(tiny_model_dir, tmp_path):
    ckpt = _copy(tiny_model_dir, tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "llava"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="neither the published CXR-LLAVA layout .* found model_type 'llava'"):
        load(ModelConfig(model=str(ckpt), device="cpu"))


def test_offline_hub_id_names_the_directory_to_provide(tmp_path):
    config = ModelConfig(model="ECOFRI/CXR-LLAVA-v2", device="cpu", local_files_only=True, cache_dir=str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"cannot fetch ECOFRI/CXR-LLAVA-v2 from the hub .* pass the directory "
                                             r"DIR as the model"):
        load(config)


def test_neither_directory_nor_hub_id_is_rejected():
    with pytest.raises(ModelLoadError, match="'not a hub id' is neither an existing directory nor a hub id"):
        load(ModelConfig(model="not a hub id", device="cpu"))


@pytest.mark.parametrize("model", ["/no/such/dir", "./no-such-dir", "~/no-such-cxr-dir", "no/such/dir", "../x"])
def test_a_missing_path_is_directory_not_found_not_a_hub_lookup(model, tmp_path):
    # local_files_only=False: were it taken for a hub id, the message would be the hub's ("cannot fetch")
    with pytest.raises(ModelLoadError, match=r"model directory .* not found; give an existing checkpoint directory"):
        load(ModelConfig(model=model, device="cpu", cache_dir=str(tmp_path)))


def test_a_local_directory_load_never_touches_the_network(tiny_model_dir, tmp_path, monkeypatch, images,
                                                          report_prompt):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during a local load: {args[1:] or kwargs}")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    engine = load(ModelConfig(model=str(tiny_model_dir), device="cpu"))
    native = load(ModelConfig(model=str(convert(tiny_model_dir, tmp_path / "native")), device="cpu"))
    for e in (engine, native):
        r = e.generate([GenerationRequest(images[0], report_prompt, GenerationSettings(temperature=0, max_new_tokens=2))])
        assert r[0].new_tokens == 2


def test_mapping_rejects_an_unknown_published_key(tiny_model_dir):
    spec = CheckpointSpec.from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    names = NativeNames("v", "p", "l", "lm_head")
    with pytest.raises(ModelLoadError, match="unexpected key vision_tower.transformer.resblocks.0.ls_1.gamma"):
        to_native({"vision_tower.transformer.resblocks.0.ls_1.gamma": torch.zeros(1)}, spec, names)


def test_an_unpinned_local_checkpoint_gets_a_content_revision(tiny_model_dir, tmp_path):
    import shutil

    from model_runtime.loader import local_revision

    first = local_revision(tiny_model_dir)
    assert first.startswith("local-") and len(first) == len("local-") + 12
    assert local_revision(tiny_model_dir) == first                    # stable
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert local_revision(copy) == first                              # the content, not the path
    shard = sorted(copy.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF                                                  # one weight byte changed
    shard.write_bytes(bytes(data))
    assert local_revision(copy) != first
    # small-sample mode: a change in the middle of a large file is caught by its size or ends only
    assert local_revision(copy, sample_bytes=1 << 30) != first
