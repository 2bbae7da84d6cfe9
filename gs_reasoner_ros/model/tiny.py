"""Tiny GS-Reasoner checkpoints in the release layout, for tests and the node's no-checkpoint mode.

Tiny widths everywhere the release lets them shrink, but the real geometry where the token layout
depends on it: SigLIP at 384 px / patch 14 (27x27 -> 14x14 tokens, 210 per frame), Sonata's real
channel widths (48, 96, 192, 384, 512 -> 1232-d features) with one block in the first two stages,
64 samples per patch, the 2048-d position path. Random weights come from the seed.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from gs_reasoner_ros.model.configuration import GSReasonerConfig

TINY_VISION = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_channels": 3, "image_size": 384, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6, "attention_dropout": 0.0,
}
TINY_SONATA = {"enc_depths": [1, 1, 0, 0, 0]}
TINY_TEXT = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 128, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
    # Wider than Qwen2's 0.02 so random logits are peaked: greedy tokens then depend on the
    # visual tokens and the prompt rather than on rounding noise between near-equal logits.
    "initializer_range": 0.25,
}


def tiny_config(vocab_size: int) -> GSReasonerConfig:
    """The tiny model's config.json contents (release keys + our "vision_config" and "sonata")."""
    return GSReasonerConfig(**TINY_TEXT, vocab_size=int(vocab_size), mm_hidden_size=TINY_VISION["hidden_size"],
                            vision_config=dict(TINY_VISION), sonata=dict(TINY_SONATA))


def build_tiny_model(vocab_size: int, seed: int = 0):
    """A tiny GSReasonerForCausalLM with random weights drawn from `seed` (global RNG untouched)."""
    from gs_reasoner_ros.model.modeling import GSReasonerForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GSReasonerForCausalLM(tiny_config(vocab_size))
    return model.eval().requires_grad_(False)


def build_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, tokenizer=None) -> Path:
    """Write a tiny random checkpoint folder in the release layout, with tokenizer files.

    tokenizer: any transformers tokenizer; None builds the project's tiny BPE. The language
    model's vocabulary is exactly the tokenizer's length."""
    if tokenizer is None:
        from gs_reasoner_ros.model.tokenizer import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), seed=seed)
    return model.save_pretrained(path, tokenizer=tokenizer)
