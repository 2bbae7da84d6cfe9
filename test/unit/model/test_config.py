"""GSReasonerConfig: the release's config.json in, the transformers configs of the parts out."""
from __future__ import annotations

import json

import pytest

from gs_reasoner_ros.model.configuration import GSReasonerConfig

# A config.json shaped like the release's (keys from gs_reasoner_model.md §4.2), with one key this
# implementation does not use, which must survive a round trip.
RELEASE_LIKE = {
    "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
    "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "intermediate_size": 18944, "vocab_size": 152064, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
    "max_position_embeddings": 32768, "tie_word_embeddings": False,
    "mm_hidden_size": 1152, "mm_projector_type": "mlp2x_gelu",
    "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_vision_select_layer": -2,
    "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2, "mm_newline_position": "grid",
    "world_position_embedding_type": "sonata_sample_64", "ground_head_type": "autoreg",
    "min_xyz_range": [-15, -15, -5],
}


def test_release_config_builds_qwen2_7b_and_truncated_so400m():
    config = GSReasonerConfig.from_dict(RELEASE_LIKE)
    text = config.text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size, text.vocab_size) == (3584, 28, 28, 4, 18944, 152064)
    assert text.rope_parameters["rope_theta"] == 1e6 and text.rope_parameters["rope_type"] == "default"
    assert text.tie_word_embeddings is False and text.rms_norm_eps == 1e-6
    vision = config.vision_config()
    # so400m-patch14-384 has 27 layers; the authors drop the last one.
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.num_attention_heads,
            vision.image_size, vision.patch_size) == (1152, 4304, 26, 16, 384, 14)
    assert vision.hidden_act == "gelu_pytorch_tanh" and vision.layer_norm_eps == 1e-6
    assert vision.vision_use_head is False
    assert config.n_points == 64


def test_round_trip_keeps_every_key(tmp_path):
    config = GSReasonerConfig.from_dict(RELEASE_LIKE)
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    for key, value in RELEASE_LIKE.items():
        assert written[key] == value, key
    assert GSReasonerConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_tied_embeddings_are_forced_off_like_the_authors_loader():
    assert GSReasonerConfig(**{**RELEASE_LIKE, "tie_word_embeddings": True}).text_config().tie_word_embeddings is False


def test_vision_architecture_from_a_siglip_folder_wins(tmp_path):
    # A SiglipModel folder nests the tower's config; missing keys take transformers' defaults.
    folder = tmp_path / "siglip"
    folder.mkdir()
    vision = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
              "num_attention_heads": 16, "image_size": 384, "patch_size": 14}
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": vision,
                                                    "text_config": {"hidden_size": 1152}}))
    config = GSReasonerConfig(**{**RELEASE_LIKE, "mm_vision_tower": "some/local-name"})
    with pytest.raises(ValueError, match="unknown vision tower 'some/local-name'"):
        config.vision_config()
    built = config.vision_config(folder)
    assert built.num_hidden_layers == 26 and built.hidden_act == "gelu_pytorch_tanh"


def test_embedded_vision_config_and_sonata_object():
    tiny_vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2}
    config = GSReasonerConfig(**{**RELEASE_LIKE, "mm_hidden_size": 32, "vision_config": tiny_vision,
                                 "sonata": {"enc_depths": [1, 1, 0, 0, 0]}})
    vision = config.vision_config()
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (32, 2, 384, 14)
    assert tuple(config.sonata_config().enc_depths) == (1, 1, 0, 0, 0)
    assert tuple(config.sonata_config().enc_channels) == (48, 96, 192, 384, 512)


@pytest.mark.parametrize("key, value, message", [
    ("model_type", "llava_llama", "model_type"),
    ("mm_newline_position", "one_token", "mm_newline_position"),
    ("mm_spatial_pool_mode", "average", "mm_spatial_pool_mode"),
    ("mm_projector_type", "linear", "mm_projector_type"),
    ("world_position_embedding_type", "sonata_sample_63", "63 samples"),
    ("world_position_embedding_type", "sin3d", "world_position_embedding_type"),
    ("hidden_size", 0, "hidden_size"),
    ("sonata", [1, 2], "'sonata' must be an object"),
])
def test_unsupported_values_are_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        GSReasonerConfig(**{**RELEASE_LIKE, key: value})


def test_mm_hidden_size_must_match_the_vision_tower():
    with pytest.raises(ValueError, match="mm_hidden_size"):
        GSReasonerConfig(**{**RELEASE_LIKE, "mm_hidden_size": 1024}).vision_config()


def test_bad_json_is_a_value_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GSReasonerConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        GSReasonerConfig.from_pretrained(tmp_path / "absent")
