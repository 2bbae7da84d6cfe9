"""The release's checkpoint layout: key names, loading errors, pickle refusal, SigLIP from a folder."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gs_reasoner_ros.model import GSReasonerForCausalLM
from gs_reasoner_ros.model.tiny import build_tiny_checkpoint, build_tiny_model

VOCAB = 300
VISION = "model.vision_tower.vision_tower.vision_model."


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny_model(VOCAB, seed=0)


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_ckpt")
    tiny_model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def release_weights(saved):
    return load_file(str(saved / "model.safetensors"))


def _copy_with(saved, tmp_path, weights):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder)
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_key_layout_is_the_release_layout(release_weights):
    keys = set(release_weights)

    def module_of(key):
        if key.startswith(VISION):
            return VISION[:-1]
        parts = key.split(".")
        return ".".join(parts[:2]) if parts[0] == "model" else parts[0]

    top = {module_of(k) for k in keys}
    assert top == {VISION[:-1], "model.embed_tokens", "model.layers", "model.norm", "lm_head", "model.mm_projector",
                   "model.image_newline", "model.spatial_encoder", "model.pointnet_pooling", "model.ada_crossattn",
                   "model.mm_spatial_projector"}

    def under(prefix):
        return {k[len(prefix):] for k in keys if k.startswith(prefix)}

    assert under("model.mm_projector.") == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert under("model.mm_spatial_projector.") == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert under("model.pointnet_pooling.") == {"mlp.weight", "mlp.bias", "logit_scale"}
    assert under("model.ada_crossattn.") == {"q_proj.weight", "k_proj.weight", "v_proj.weight"}
    assert under("model.embed_tokens.") == {"weight"} and under("lm_head.") == {"weight"}
    assert under("model.norm.") == {"weight"} and "model.image_newline" in keys
    assert {k.split(".")[0] for k in under("model.layers.")} == {"0", "1"}
    assert under("model.layers.0.") == {
        f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")} | {
        "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
        "input_layernorm.weight", "post_attention_layernorm.weight"}
    siglip_layer = {f"self_attn.{p}_proj.{w}" for p in ("q", "k", "v", "out") for w in ("weight", "bias")} | {
        f"{m}.{w}" for m in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2") for w in ("weight", "bias")}
    vision = under(VISION)
    # tiny SigLIP has 2 layers; the authors keep all but the last, plus the unused post-LayerNorm
    assert vision == {"embeddings.patch_embedding.weight", "embeddings.patch_embedding.bias",
                      "embeddings.position_embedding.weight", "post_layernorm.weight", "post_layernorm.bias"} | {
        f"encoder.layers.0.{k}" for k in siglip_layer}
    block = r"enc\.enc\d\.block\d+\.(cpe\.[012]|norm1\.0|attn\.(qkv|proj)|norm2\.0|mlp\.0\.fc[12])\.(weight|bias)"
    pattern = re.compile(rf"embedding\.stem\.(linear|norm)\.(weight|bias)|{block}|enc\.enc[1-4]\.down\.(proj|norm\.0)\.(weight|bias)")
    sonata = under("model.spatial_encoder.")
    assert sonata and all(pattern.fullmatch(k) for k in sonata), sorted(k for k in sonata if not pattern.fullmatch(k))
    assert not any(k.startswith("enc.enc0.down") for k in sonata)


def test_release_shapes(release_weights):
    w = release_weights
    assert w["model.embed_tokens.weight"].shape == (VOCAB, 64) and w["lm_head.weight"].shape == (VOCAB, 64)
    assert w["model.mm_projector.0.weight"].shape == (64, 32)
    assert w["model.pointnet_pooling.mlp.weight"].shape == (2048, 1232) and w["model.pointnet_pooling.logit_scale"].shape == ()
    assert w["model.ada_crossattn.q_proj.weight"].shape == (1232, 32)
    assert w["model.ada_crossattn.k_proj.weight"].shape == (1232, 1232)
    assert w["model.mm_spatial_projector.0.weight"].shape == (64, 3280)
    assert w["model.spatial_encoder.enc.enc0.block0.cpe.0.weight"].shape == (48, 3, 3, 3, 48)  # spconv layout
    assert w[VISION + "embeddings.position_embedding.weight"].shape == (729, 32)


def test_sharded_round_trip_is_exact(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path, max_shard_size=4_000_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _assert_same_weights(tiny_model, GSReasonerForCausalLM.from_pretrained(tmp_path))


def test_missing_and_unknown_keys_are_named(saved, release_weights, tmp_path):
    weights = dict(release_weights)
    del weights["model.ada_crossattn.k_proj.weight"]
    weights["model.some_head.weight"] = torch.zeros(2)
    folder = _copy_with(saved, tmp_path, weights)
    with pytest.raises(ValueError) as err:
        GSReasonerForCausalLM.from_pretrained(folder)
    assert "missing keys: model.ada_crossattn.k_proj.weight" in str(err.value)
    assert "unknown keys: model.some_head.weight" in str(err.value)


def test_shape_mismatch_is_named(saved, release_weights, tmp_path):
    weights = dict(release_weights, **{"model.mm_projector.2.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match=r"model\.mm_projector\.2\.bias has shape \(7,\)"):
        GSReasonerForCausalLM.from_pretrained(_copy_with(saved, tmp_path, weights))


def test_vocab_size_comes_from_the_weights(saved, release_weights, tmp_path):
    # The authors' loader overrides config.json's vocab_size with the embedding's row count.
    folder = _copy_with(saved, tmp_path, release_weights)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 512}))
    model = GSReasonerForCausalLM.from_pretrained(folder)
    assert model.language_model.lm_head.weight.shape[0] == VOCAB


class _NotATensor:
    pass


def test_pickle_only_with_weights_only(tiny_model, saved, release_weights, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder)
    torch.save(release_weights, folder / "pytorch_model.bin")  # plain tensors: weights_only can read it
    _assert_same_weights(tiny_model, GSReasonerForCausalLM.from_pretrained(folder))
    torch.save({**release_weights, "extra": _NotATensor()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to load.*weights_only=True"):
        GSReasonerForCausalLM.from_pretrained(folder)


def test_vision_tower_from_a_siglip_folder(tiny_model, saved, release_weights, tmp_path):
    without = {k: v for k, v in release_weights.items() if not k.startswith(VISION)}
    folder = _copy_with(saved, tmp_path, without)
    with pytest.raises(ValueError, match="no vision tower weights.*vision_tower=DIR"):
        GSReasonerForCausalLM.from_pretrained(folder)
    # A SiglipModel-style folder: "vision_model." prefix, one more layer (dropped), a head and a text tower.
    siglip = tmp_path / "siglip"
    siglip.mkdir()
    config = json.loads((saved / "config.json").read_text())["vision_config"]
    (siglip / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": config,
                                                    "text_config": {}}))
    tower = {"vision_model." + k[len(VISION):]: v for k, v in release_weights.items() if k.startswith(VISION)}
    tower["vision_model.encoder.layers.1.mlp.fc1.weight"] = torch.zeros(64, 32)
    tower["vision_model.head.probe"] = torch.zeros(1, 1, 32)
    tower["text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 32)
    save_file(tower, str(siglip / "model.safetensors"))
    _assert_same_weights(tiny_model, GSReasonerForCausalLM.from_pretrained(folder, vision_tower=siglip))


def test_no_weights_is_a_value_error(saved, tmp_path):
    shutil.copy(saved / "config.json", tmp_path)
    with pytest.raises(ValueError, match="no weights"):
        GSReasonerForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        GSReasonerForCausalLM.from_pretrained(tmp_path / "absent")


def test_tiny_checkpoint_carries_its_tokenizer(tmp_path):
    from gs_reasoner_ros.model.tokenizer import build_tiny_tokenizer, load_tokenizer

    tokenizer = build_tiny_tokenizer()
    build_tiny_checkpoint(tmp_path, seed=1, tokenizer=tokenizer)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        rows = f.get_slice("model.embed_tokens.weight").get_shape()[0]
    assert rows == len(tokenizer)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.convert_tokens_to_ids("<bbox>") == tokenizer.convert_tokens_to_ids("<bbox>") < rows


def test_key_map_is_a_bijection_onto_the_model(tiny_model, release_weights):
    from gs_reasoner_ros.model.checkpoint import to_module_key, to_release_key

    ours = set(tiny_model.state_dict())
    mapped = {to_module_key(k) for k in release_weights}
    assert mapped == ours
    assert all(to_release_key(to_module_key(k)) == k for k in release_weights)
    assert to_module_key("model.image_newline_extra") is None and to_module_key("model.faster_token") is None
