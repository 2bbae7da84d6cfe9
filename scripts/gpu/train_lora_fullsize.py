#!/usr/bin/env python
"""A few LoRA optimizer steps of the FULL-SIZE GS-Reasoner (random weights) in bf16: peak memory
and step time, for issue 6 (does LoRA fine-tuning fit one 24-48 GB GPU?).

    python scripts/gpu/train_lora_fullsize.py --steps 4 --frames 32 --out result.json     # H100
    python scripts/gpu/train_lora_fullsize.py --tiny --steps 2 --frames 1                 # CPU smoke test

It builds the release architecture from its config (Qwen2-7B LLM, SigLIP so400m minus one layer,
Sonata, dual-path pooling) with random weights in bf16 on the GPU (Sonata float32), writes a small
synthetic dataset, and runs the project's trainer path (TrainingForward, LoRA via peft, gradient
checkpointing, AdamW on adapters + projectors + Sonata) for --steps steps. Prints one JSON line
per step and a summary; --out also writes the summary. Needs peft + accelerate (pure Python).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

for key, value in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ[key] = value  # multicast off, as every launcher here does


def build_model(tiny: bool, device, vocab_size: int):
    import torch

    from gs_reasoner_ros.model.configuration import GSReasonerConfig
    from gs_reasoner_ros.model.modeling import GSReasonerForCausalLM

    if tiny:
        from gs_reasoner_ros.model.tiny import tiny_config

        config = tiny_config(vocab_size)
    else:
        config = GSReasonerConfig(vocab_size=vocab_size)  # the release's sizes (configuration.DEFAULTS)
    torch.manual_seed(0)
    with torch.device(device):
        model = GSReasonerForCausalLM(config)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model.to(dtype)
    model.spatial_encoder.float()  # the authors run Sonata in float32
    return model


def main(argv=None) -> int:
    import torch

    from gs_reasoner_ros.model.tokenizer import build_tiny_tokenizer
    from gs_reasoner_ros.training import trainer as T
    from gs_reasoner_ros.training.data import SampleBuilder, load_sample_file
    from gs_reasoner_ros.training.synthetic_data import write_synthetic_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny widths (CPU smoke test)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--lora-alpha", type=int, default=128)
    p.add_argument("--no-checkpointing", action="store_true", help="switch gradient checkpointing off")
    p.add_argument("--frame-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    p.add_argument("--out", help="write the summary JSON here")
    args = p.parse_args(argv)

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    tokenizer = build_tiny_tokenizer()
    # Full vocabulary size so embed/lm_head have the release's shapes; ids stay within the tiny tokenizer.
    vocab = len(tokenizer) if args.tiny else 151653
    t0 = time.perf_counter()
    model = build_model(args.tiny, device, vocab)
    build_s = time.perf_counter() - t0
    T.add_lora(model, args.lora_r, args.lora_alpha, 0.05)
    T.set_trainable(model, lora=True)
    model.train()
    model.vision_tower.eval()
    if not args.no_checkpointing:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    bf16 = device.type == "cuda"
    if bf16:
        T._run_sonata_in_float32(model)
    wrapper = T.TrainingForward(model, deterministic_geometry=False, bf16_coords=False)
    optimizer = torch.optim.AdamW(T.parameter_groups(wrapper, 1e-5, 1e-5), weight_decay=0.0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        w, h = args.frame_size
        paths = write_synthetic_dataset(tmp, n_scenes=1, n_frames=max(2, args.frames), width=w, height=h)
        samples = [s for s in load_sample_file(paths["grounding"]) if s["metadata"]["dataset"] == "scanrefer"]
        builder = SampleBuilder(paths["root"], tokenizer, frames=args.frames, crop=model.image_size)
        examples = [builder.build(samples[k % len(samples)], k) for k in range(args.steps)]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    records = []
    for step, ex in enumerate(examples):
        t = time.perf_counter()
        pixel_values = torch.from_numpy(ex.pixel_values).to(device)
        world_coords = torch.from_numpy(ex.world_coords).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = wrapper(pixel_values, world_coords, ex.input_ids, ex.labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        record = {"step": step + 1, "loss": round(loss.item(), 4), "step_s": round(time.perf_counter() - t, 3),
                  "prompt_tokens": len(ex.input_ids) - 1 + len(ex.pixel_values) * model.tokens_per_frame}
        if device.type == "cuda":
            record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        records.append(record)
        print(json.dumps(record), flush=True)
    summary = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "tiny": args.tiny,
               "frames": args.frames, "lora_r": args.lora_r, "gradient_checkpointing": not args.no_checkpointing,
               "params_total": total, "params_trainable": trainable, "build_s": round(build_s, 1),
               "steps": records, "mean_step_s_after_first": round(sum(r["step_s"] for r in records[1:]) /
                                                                max(1, len(records) - 1), 3),
               "peak_memory_gb": records[-1].get("peak_memory_gb"),
               "finite": all(r["loss"] == r["loss"] and abs(r["loss"]) != float("inf") for r in records)}
    print(json.dumps(summary))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0 if summary["finite"] else 1


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    sys.exit(main())
