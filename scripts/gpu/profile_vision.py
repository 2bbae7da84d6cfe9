"""SigLIP so400m (26 kept layers) on 32 frames: time per dtype and attention implementation.

    python3 scripts/gpu/profile_vision.py --out "$OUT"

Facts for the SigLIP stage of `bench gpu` (the model runs the tower in fp16 like the authors):
median ms of embeddings + encoder for 32 384x384 frames, achieved TFLOP/s, and the top kernels
of the fp16 SDPA run (written to --out/profile_siglip.txt).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import SiglipVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gs_reasoner_ros.model.configuration import GSReasonerConfig  # noqa: E402
from profile_llm import bench_ms  # noqa: E402  (CUDA-event median, shared with the LLM profile)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = GSReasonerConfig().vision_config()
    with torch.device("cuda"):
        tower = SiglipVisionModel(cfg).eval()
    pixels = torch.rand(args.frames, 3, cfg.image_size, cfg.image_size, device="cuda") * 2 - 1
    tokens = args.frames * (cfg.image_size // cfg.patch_size) ** 2
    params = sum(p.numel() for p in tower.encoder.parameters())
    per_frame = tokens // args.frames
    flops = 2 * params * tokens + 4 * cfg.num_hidden_layers * args.frames * per_frame**2 * cfg.hidden_size
    result = {"frames": args.frames, "layers": cfg.num_hidden_layers, "tflop": flops / 1e12,
              "default_attn": str(tower.config._attn_implementation)}

    def forward():
        x = tower.embeddings(pixels.to(dtype))
        return tower.encoder(inputs_embeds=x).last_hidden_state

    with torch.inference_mode():
        for attn in ("sdpa", "eager"):
            tower.set_attn_implementation(attn)
            for dtype in (torch.float16, torch.bfloat16):
                tower.to(dtype)
                ms = bench_ms(forward, reps=10)
                result[f"{attn}_{str(dtype)[6:]}_ms"] = ms
                result[f"{attn}_{str(dtype)[6:]}_tflops"] = flops / ms / 1e9
        tower.set_attn_implementation("sdpa")
        tower.to(torch.float16)
        dtype = torch.float16
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            forward()
            torch.cuda.synchronize()
        (args.out / "profile_siglip.txt").write_text(
            prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
    (args.out / "siglip.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
