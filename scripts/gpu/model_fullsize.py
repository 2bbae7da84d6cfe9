#!/usr/bin/env python3
"""Full-size GS-Reasoner on one GPU: random bf16 weights, one 32-frame question, time and memory per stage.

Builds the release architecture (Qwen2-7B sizes with vocab 151653, SigLIP so400m-patch14-384 with
its last layer dropped, the released Sonata, the dual-path pooling) with random weights directly on
the device, makes synthetic RGB-D frames (640x480, random depth 1-4 m, cameras on a circle), and
answers one prompt: preprocess -> SigLIP -> Sonata -> pooling -> prefill -> greedy decode.
A warm-up pass runs first (CUDA kernels, cuBLAS handles), the second pass is reported.

    python scripts/gpu/model_fullsize.py --json            # on the GPU machine
    python scripts/gpu/model_fullsize.py --tiny --frames 2  # CPU smoke test with the tiny model
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from gs_reasoner_ros.model import IMAGE_TOKEN_INDEX, GSReasonerConfig, GSReasonerForCausalLM
from gs_reasoner_ros.scene import Scene

# Qwen2-7B / LLaVA-Video-7B-Qwen2 sizes with the evaluation loader's vocab (gs_reasoner_model.md §1.2, §4.2).
FULL_SIZE = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=151653, rope_theta=1000000.0, rms_norm_eps=1e-6,
                 max_position_embeddings=32768)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the tiny test model (CPU smoke test)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=80, help="text tokens around the <image> placeholder")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bfloat16, float32 with --tiny")
    p.add_argument("--random-sonata", action="store_true",
                   help="the authors' random voxel sampling and serialization order (seeded)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes before the reported one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    if args.frames < 1 or args.prompt_tokens < 2 or args.max_new_tokens < 1:
        p.error("--frames, --max-new-tokens must be >= 1 and --prompt-tokens >= 2")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("CUDA is not available; use --tiny (CPU) or --device cpu")
    return args


def build_model(args) -> GSReasonerForCausalLM:
    """Random weights, built in place on the device in the model dtype (Sonata in float32)."""
    if args.tiny:
        from gs_reasoner_ros.model.tiny import tiny_config

        config = tiny_config(vocab_size=300)
    else:
        config = GSReasonerConfig(**FULL_SIZE)
    previous = torch.get_default_dtype()
    torch.manual_seed(args.seed)
    torch.set_default_dtype(args.dtype)
    try:
        with torch.device(args.device):
            model = GSReasonerForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.spatial_encoder.float()
    model.set_vision_dtype(None)  # fp16 SigLIP under bf16 on CUDA, as the authors run it
    return model.eval().requires_grad_(False)


def synthetic_scene(frames: int, seed: int) -> Scene:
    """640x480 frames with uniform random depth in 1-4 m, cameras on a 2 m circle looking outwards."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (frames, 480, 640, 3), dtype=np.uint8)
    depth = rng.uniform(1.0, 4.0, (frames, 480, 640)).astype(np.float32)
    k = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
    poses = np.zeros((frames, 4, 4))
    for f in range(frames):
        yaw = 2 * math.pi * f / frames
        # optical axes: x right, y down, z forward (horizontal, pointing away from the centre)
        forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        right = np.cross(down, forward)
        poses[f, :3, :3] = np.stack([right, down, forward], axis=1)
        poses[f, :3, 3] = 2.0 * forward + np.array([0.0, 0.0, 1.5])
        poses[f, 3, 3] = 1.0
    return Scene(rgb, depth, k, poses)


def synthetic_prompt(length: int, vocab: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed + 1)
    ids = rng.integers(0, min(vocab, 151643), length).tolist()
    ids[min(14, length - 1)] = IMAGE_TOKEN_INDEX  # after the system turn, like the ChatML prompt
    return ids


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one_pass(model, scene, prompt, args) -> dict:
    report: dict = {}
    cuda = args.device.startswith("cuda")
    sync(args.device)
    start = time.perf_counter()
    pixel_values, world_coords = model.preprocess(scene, np.arange(len(scene)))
    sync(args.device)
    report["preprocess_s"] = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator(device="cpu").manual_seed(args.seed) if args.random_sonata else None
    with torch.inference_mode():
        visual = model.encode_visual(pixel_values, world_coords, deterministic=not args.random_sonata,
                                     generator=generator)
    report.update(model.timings)
    if cuda:
        report["peak_gib_visual"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    out = model.generate(prompt, visual, args.max_new_tokens, eos_token_ids=[])
    if cuda:
        report["peak_gib_generate"] = torch.cuda.max_memory_allocated() / 2**30
    report.update({k: out.timings[k] for k in ("prefill_s", "decode_s", "decode_s_per_token")})
    report.update(prompt_tokens=out.timings["prompt_tokens"], new_tokens=out.timings["new_tokens"],
                  visual_tokens=int(visual.shape[0]), visual_finite=bool(torch.isfinite(visual).all()))
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    model = build_model(args)
    sync(args.device)
    result: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "dtype": str(args.dtype).replace("torch.", ""), "vision_dtype": str(model.vision_dtype).replace("torch.", ""),
                    "frames": args.frames, "tiny": args.tiny, "sonata_mode": "random" if args.random_sonata else "deterministic",
                    "parameters": sum(p.numel() for p in model.parameters()), "build_s": time.perf_counter() - start}
    if args.device.startswith("cuda"):
        result["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    scene = synthetic_scene(args.frames, args.seed)
    prompt = synthetic_prompt(args.prompt_tokens, model.config.vocab_size, args.seed)
    for _ in range(args.warmup):
        one_pass(model, scene, prompt, args)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result.update(one_pass(model, scene, prompt, args))
    if args.device.startswith("cuda"):
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value:.4f}" if isinstance(value, float) else f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
