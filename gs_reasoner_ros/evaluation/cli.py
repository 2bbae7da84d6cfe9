"""`gs-reasoner eval`: run a checkpoint over a benchmark file and print the official metrics,
or (--score) score saved predictions without loading any model.

    gs-reasoner eval --task scanrefer --checkpoint DIR --data scanrefer_val_llava_style.json \\
        --data-root processed_data [--limit N] [--json] [--predictions OUT.jsonl] [--per-sample F]
    gs-reasoner eval --task scanrefer --data scanrefer_val_llava_style.json --score OUT.jsonl \\
        [--json] [--per-sample F]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gs_reasoner_ros.evaluation.runners import TASKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--checkpoint", help="model folder (release layout); `demo` = the shipped demo model; omitted or `tiny` = "
                        "tiny untrained model")
    p.add_argument("--data", required=True, help="benchmark file: JSON list or JSON Lines")
    p.add_argument("--data-root", help="folder of the processed-data scenes (default: the data file's folder)")
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--frames", type=int, default=32, help="frames per scene (authors: 32)")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: the Reasoner's per task)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--vision-tower", help="SigLIP folder when the checkpoint lacks the vision weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.add_argument("--predictions", help="write every prediction as JSON Lines to this file")
    p.add_argument("--score", metavar="PREDICTIONS.jsonl",
                   help="score saved predictions (the --predictions format: `text` and `index` or `id` "
                        "per line) against --data; no model is loaded")
    p.add_argument("--per-sample", metavar="FILE", help="write each sample's official scores as JSON Lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from gs_reasoner_ros.evaluation.runners import format_table
    from gs_reasoner_ros.evaluation.scoring import write_per_sample

    try:
        report = _score_saved(args) if args.score else _run_model(args)
    except (ValueError, KeyError, OSError) as err:
        print(f"gs-reasoner eval: {err}", file=sys.stderr)
        return 2
    if args.predictions:
        with open(args.predictions, "w", encoding="utf-8") as f:
            for p in report.predictions:
                f.write(json.dumps(p, default=float) + "\n")
    if args.per_sample:
        write_per_sample(args.per_sample, report)
    if args.json:
        # --score prints one JSON line (stable for scripts); a model run keeps its indented form
        print(json.dumps(report.to_json(), indent=None if args.score else 1))
    else:
        print(format_table(report))
    return 0


def _score_saved(args: argparse.Namespace):
    from gs_reasoner_ros.evaluation.scoring import read_predictions, score_predictions
    from gs_reasoner_ros.training.data import read_json_records

    if args.predictions or args.limit is not None:
        raise ValueError("--score scores a predictions file as it is: no --predictions or --limit with it")
    return score_predictions(args.task, read_json_records(args.data), read_predictions(args.score))


def _run_model(args: argparse.Namespace):
    from gs_reasoner_ros.evaluation.runners import ReasonerAnswerer, evaluate
    from gs_reasoner_ros.reasoner import Reasoner
    from gs_reasoner_ros.training.data import read_json_records

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    samples = read_json_records(args.data)
    if args.limit:
        samples = samples[: args.limit]
    data_root = Path(args.data_root) if args.data_root else Path(args.data).parent
    if not data_root.is_dir():
        raise ValueError(f"data root {data_root} does not exist")
    checkpoint = args.checkpoint
    if checkpoint in ("tiny", "demo") and Path(checkpoint).is_dir():
        checkpoint = str(Path(checkpoint).resolve())  # a folder of that name in the working directory wins
    reasoner = Reasoner.load(checkpoint, device=args.device, dtype=args.dtype, vision_tower=args.vision_tower,
                             num_frames=args.frames, seed=args.seed)
    answerer = ReasonerAnswerer(reasoner, data_root, num_frames=args.frames, max_new_tokens=args.max_new_tokens)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        def progress(items):
            return tqdm(items, desc=args.task, unit="q", file=sys.stderr)
    return evaluate(args.task, samples, answerer, progress=progress)
