"""The demo model: a small GS-Reasoner trained on generated rooms, shipped with the package.

Same architecture as the release (SigLIP -> projector, Sonata with its real 1232-d multi-scale
features, the dual-path pooling, the sine position encoding, a Qwen2 decoder), with sizes small
enough to train on one GPU in minutes and to answer on two CPU cores in seconds:
224 px frames (16x16 SigLIP patches pooled to 8x8 tokens, 72 per frame with the row newlines),
16 Sonata samples per patch, a 4-layer 256-wide decoder and the project's small BPE vocabulary.

Its weights live in gs_reasoner_ros/models/demo (the release layout, float16, < 25 MB) and come
from `scripts/train_demo_model.sh`; the model card there says what it can and cannot do. It is
NOT GS-Reasoner's release: it knows only the generated rooms' furniture.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from gs_reasoner_ros.model.configuration import GSReasonerConfig

DEMO = "demo"  # the name `--checkpoint demo` and the node's empty checkpoint resolve to
TINY = "tiny"  # the untrained random model (tests)
DEMO_NOTE = ("demo model: a small GS-Reasoner trained on generated synthetic rooms, not GS-Reasoner's "
             "release; it knows a dozen furniture classes in box-shaped rooms")

DEMO_VISION = {
    "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_channels": 3, "image_size": 224, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6, "attention_dropout": 0.0,
}
DEMO_SONATA = {"enc_depths": [1, 1, 0, 0, 0], "enc_patch_size": [256] * 5}
DEMO_TEXT = {
    "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 768, "max_position_embeddings": 32768, "rope_theta": 10000.0,
    "initializer_range": 0.02, "world_position_embedding_type": "sonata_sample_16",
}


def demo_config(vocab_size: int) -> GSReasonerConfig:
    """config.json of the demo model (release keys + our "vision_config" and "sonata")."""
    return GSReasonerConfig(**DEMO_TEXT, vocab_size=int(vocab_size), mm_hidden_size=DEMO_VISION["hidden_size"],
                            vision_config=dict(DEMO_VISION), sonata=dict(DEMO_SONATA))


def build_demo_init_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """The untrained starting point of the demo recipe (random weights from `seed`), with the
    project's small tokenizer, in the release layout."""
    from gs_reasoner_ros.model.modeling import GSReasonerForCausalLM
    from gs_reasoner_ros.model.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GSReasonerForCausalLM(demo_config(len(tokenizer)))
    return model.save_pretrained(path, tokenizer=tokenizer)


def demo_checkpoint_dir() -> str | None:
    """The shipped demo weights' folder, or None when this install has none (a fresh recipe run
    before training, or a trimmed package)."""
    folder = Path(str(resources.files("gs_reasoner_ros").joinpath("models", "demo")))
    return str(folder) if (folder / "config.json").is_file() else None


def shrink_to_float16(folder: str | os.PathLike) -> None:
    """Rewrite a checkpoint's safetensors in float16 (halves the shipped size; loading casts back)."""
    from safetensors.torch import load_file, save_file

    for file in Path(folder).glob("*.safetensors"):
        state = load_file(str(file))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(file),
                  metadata={"format": "pt"})
