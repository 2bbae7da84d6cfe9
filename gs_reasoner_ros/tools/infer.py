"""`gs-reasoner infer`: answer one question about a recorded scene.

    gs-reasoner infer --checkpoint DIR --scene SCENE --question TEXT [--task spatial|ground|qa]
        [--options ...] [--vision-tower DIR] [--device cpu|cuda] [--dtype float32|bfloat16]
        [--max-new-tokens N] [--seed S] [--json] [--dump FILE.npz]

`--checkpoint tiny` runs a tiny model with random weights (for trying the pipeline; its answers
are meaningless). User errors print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

TINY, DEMO = "tiny", "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="GS-Reasoner checkpoint folder (official layout); 'demo' = the shipped demo model "
                             "(small, trained on synthetic rooms); 'tiny' = untrained tiny model")
    parser.add_argument("--scene", metavar="SCENE", required=True,
                        help="scene .npz or processed-data folder (color/ depth/ pose/ intrinsic/)")
    parser.add_argument("--question", metavar="TEXT", required=True, help="the question or object description")
    parser.add_argument("--task", choices=("spatial", "ground", "qa"), default="spatial",
                        help="spatial: grounded chain of thought; ground / qa: direct answer (default spatial)")
    parser.add_argument("--options", nargs="+", default=[], metavar="OPTION",
                        help='multiple-choice options, e.g. --options "A. chair" "B. table" (tasks spatial and qa)')
    parser.add_argument("--vision-tower", metavar="DIR", help="SigLIP folder, if the checkpoint lacks it")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="generation budget (default 1024 for spatial, 512 for ground/qa)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the tiny model's weights and of any random sampling (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dump", metavar="FILE.npz",
                        help="write prompt_ids, visual_embeds, last_logits and generated_ids")


class UserError(Exception):
    """A problem with the command line or the input files: reported without a traceback."""


def _answer_json(answer) -> dict:
    return {
        "answer": answer.answer,
        "text": answer.text,
        "objects": [{"label": o.label, "box_min": [float(v) for v in o.box_min],
                     "box_max": [float(v) for v in o.box_max], "confidence": float(o.confidence)}
                    for o in answer.objects],
        "timings": {k: float(v) for k, v in answer.timings.items()},
    }


def _print_text(answer) -> None:
    print(f"answer: {answer.answer}")
    print(f"reasoning: {answer.text}")
    for o in answer.objects:
        lo = ", ".join(f"{v:.4f}" for v in o.box_min)
        hi = ", ".join(f"{v:.4f}" for v in o.box_max)
        print(f"object: {o.label or '?'} min ({lo}) max ({hi}) confidence {o.confidence:.3f}")
    print("timings: " + ", ".join(f"{k} {v:.3f} s" for k, v in answer.timings.items()))


def _check_paths(args) -> None:
    if not args.checkpoint:
        raise UserError("--checkpoint DIR is required: the GS-Reasoner folder (ymccccc/GS-Reasoner), "
                        f"or '--checkpoint {TINY}' for an untrained tiny model")
    if args.checkpoint not in (TINY, DEMO) and not os.path.isdir(args.checkpoint):
        raise UserError(f"--checkpoint {args.checkpoint!r} is not a folder")
    if not os.path.exists(args.scene):
        raise UserError(f"--scene {args.scene!r} does not exist")
    if args.dump:
        parent = os.path.dirname(os.path.abspath(args.dump))
        if not os.path.isdir(parent):
            raise UserError(f"--dump: folder {parent!r} does not exist")
        if not args.dump.endswith(".npz"):
            raise UserError(f"--dump must name a .npz file, got {args.dump!r}")


def _infer(args) -> int:
    import numpy as np

    from gs_reasoner_ros.reasoner import Reasoner, check_query
    from gs_reasoner_ros.scene import Scene

    _check_paths(args)
    check_query(args.question, args.options, args.task, args.max_new_tokens)  # before the slow model load
    try:
        scene = Scene.load(args.scene)
    except (ValueError, OSError, KeyError) as err:
        raise UserError(f"cannot read --scene {args.scene!r}: {err}") from None
    reasoner = Reasoner.load(args.checkpoint, device=args.device, dtype=args.dtype,
                             vision_tower=args.vision_tower, seed=args.seed)
    if reasoner.model_note:
        print(f"gs-reasoner infer: note: {reasoner.model_note}", file=sys.stderr)
    if reasoner.untrained:
        print("gs-reasoner infer: WARNING: untrained tiny model (random weights); the answer is meaningless",
              file=sys.stderr)
    result = reasoner.run(scene, args.question, options=args.options, task=args.task,
                          max_new_tokens=args.max_new_tokens)
    if args.dump:
        np.savez(args.dump, prompt_ids=result.prompt_ids, visual_embeds=result.visual_embeds,
                 last_logits=result.last_logits, generated_ids=result.generated_ids)
    if args.json:
        print(json.dumps(_answer_json(result.answer)))
    else:
        _print_text(result.answer)
    return 0


def run(args) -> int:
    """Entry point of the subcommand (see module docstring)."""
    try:
        return _infer(args)
    except (UserError, ValueError) as err:
        print(f"gs-reasoner infer: error: {err}", file=sys.stderr)
        return 2
