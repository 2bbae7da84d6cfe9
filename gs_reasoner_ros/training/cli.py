"""`gs-reasoner train`: one of the authors' two stages on a mixture, on CPU, one GPU or torchrun.

    gs-reasoner train --stage pretrain --checkpoint INIT --data mix.yaml --data-root DIR --output OUT
    torchrun --nproc-per-node 8 -m gs_reasoner_ros.tools.cli train --stage finetune ... --bf16 --gradient-checkpointing
    gs-reasoner train --make-synthetic DIR     # writes a small synthetic dataset and exits
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", choices=("pretrain", "finetune"), default="finetune",
                   help="pretrain: dual-path lr 1e-4, 16-48 random frames, global batch 16; "
                        "finetune: one lr, 32 frames, global batch 256")
    p.add_argument("--checkpoint", help="initial weights: a folder in the release layout (with tokenizer files)")
    p.add_argument("--data", help="mixture YAML (authors' format) or a JSON/JSONL sample file")
    p.add_argument("--data-root", help="folder holding the scenes, one processed-data folder per sample 'video'")
    p.add_argument("--output", help="where the checkpoint (release layout) and training_args.json go")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-5)")
    p.add_argument("--dual-path-lr", type=float, help="lr of mm_spatial_projector/pointnet_pooling/ada_crossattn "
                                                       "(default 1e-4 pretrain, lr finetune)")
    p.add_argument("--global-batch", type=int, help="samples per optimizer step over all processes "
                                                     "(default 16 pretrain, 256 finetune)")
    p.add_argument("--frames", type=int, nargs="+", metavar="N",
                   help="frames per sample: N, or LOW HIGH drawn per sample (default 16 48 / 32)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--no-augment", action="store_true", help="switch the point-cloud augmentation off")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (Sonata stays float32)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--lora", action="store_true", help="LoRA adapters on the LLM (merged into the saved weights)")
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--lora-alpha", type=int, default=128)
    p.add_argument("--distributed", choices=("fsdp", "ddp"), default="fsdp", help="engine under torchrun")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--vision-tower", help="SigLIP folder when the checkpoint lacks the vision weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, help="intermediate checkpoints every N steps (default 500 / 50)")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0: in the training loop)")
    p.add_argument("--make-synthetic", metavar="DIR", help="write a synthetic dataset to DIR and exit")


def run(args: argparse.Namespace) -> int:
    from gs_reasoner_ros.training.trainer import TrainConfig, apply_nccl_safe_env, train

    apply_nccl_safe_env()
    if args.make_synthetic:
        from gs_reasoner_ros.training.synthetic_data import write_synthetic_dataset

        paths = write_synthetic_dataset(args.make_synthetic)
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 0
    missing = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--data", args.data),
                                        ("--data-root", args.data_root), ("--output", args.output)) if not value]
    if missing:
        print(f"gs-reasoner train: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    frames = None
    if args.frames:
        if len(args.frames) > 2:
            print("gs-reasoner train: --frames takes N or LOW HIGH", file=sys.stderr)
            return 2
        frames = (args.frames[0], args.frames[-1])
    cfg = TrainConfig(stage=args.stage, checkpoint=args.checkpoint, data=args.data, data_root=args.data_root,
                      output_dir=args.output, lr=args.lr, dual_path_lr=args.dual_path_lr,
                      global_batch=args.global_batch, frames=frames, epochs=args.epochs, max_steps=args.max_steps,
                      warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, augment=not args.no_augment,
                      bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing, lora=args.lora,
                      lora_r=args.lora_r, lora_alpha=args.lora_alpha, distributed=args.distributed,
                      device=args.device, vision_tower=args.vision_tower, seed=args.seed, save_steps=args.save_steps,
                      workers=args.workers)
    try:
        train(cfg)
    except ValueError as err:
        print(f"gs-reasoner train: {err}", file=sys.stderr)
        return 2
    return 0
