"""The demo model from nothing: rooms, both training stages, held-out scores, learning curves.

    python -m gs_reasoner_ros.training.demo_recipe --out WORK [--train-rooms N] [--eval-rooms N]
        [--pretrain-steps N] [--finetune-steps N] [--global-batch N] [--frames LOW HIGH]
        [--stage-minutes M] [--device cpu|cuda] [--workers N] [--bf16] [--install]

1. an untrained demo-size checkpoint (model/demo.py) with random weights;
2. one room per training seed 0..N-1, recorded as the node records (training/rooms.py), with
   grounding and GCoT labels (training/demo_data.py); held-out rooms use seeds from
   EVAL_SEED_BASE on, never used in training;
3. `pretrain` on the grounding samples, then `finetune` on grounding + GCoT, with the project's
   trainer (training/trainer.py, the code behind `gs-reasoner train`);
4. the final weights answer every held-out question (evaluation/rooms.py), and so does the
   untrained start, for comparison;
5. WORK/curves.csv + curves.png (loss per optimizer step, both stages), WORK/scores.json, and
   the weights in float16 in WORK/model; --install copies them, the curves and the scores into
   gs_reasoner_ros/models/demo.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

EVAL_SEED_BASE = 900_000
PACKAGE_DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo_recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="work folder (data, checkpoints, curves, scores)")
    p.add_argument("--train-rooms", type=int, default=400)
    p.add_argument("--eval-rooms", type=int, default=50)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--finetune-steps", type=int, default=1000)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--frames", type=int, nargs=2, default=(16, 24), metavar=("LOW", "HIGH"))
    p.add_argument("--lr", type=float, default=1e-3, help="pretraining lr (fine-tuning uses half)")
    p.add_argument("--stage-minutes", type=float, default=None, help="time limit per training stage")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes while training")
    p.add_argument("--data-workers", type=int, default=1, help="processes recording rooms")
    p.add_argument("--eval-max-new-tokens", type=int, default=160)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--install", action="store_true", help="copy the weights and results into the package")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def stage_config(args, stage: str, checkpoint: Path, data: Path, output: Path):
    from gs_reasoner_ros.training.trainer import TrainConfig

    lr = args.lr if stage == "pretrain" else args.lr / 2
    steps = args.pretrain_steps if stage == "pretrain" else args.finetune_steps
    return TrainConfig(stage=stage, checkpoint=str(checkpoint), data=str(data), data_root=str(data.parent),
                       output_dir=str(output), lr=lr, dual_path_lr=lr, global_batch=args.global_batch,
                       frames=tuple(args.frames), max_steps=steps, warmup_ratio=0.03, bf16=args.bf16,
                       device=args.device, seed=args.seed, save_steps=0, log_every=10, workers=args.workers,
                       max_seconds=None if args.stage_minutes is None else 60.0 * args.stage_minutes)


def record_eval_rooms(root: Path, count: int) -> list[dict]:
    """Held-out rooms recorded like the training ones; their items in each folder's model frame."""
    from gs_reasoner_ros.evaluation.rooms import room_eval_items
    from gs_reasoner_ros.training.rooms import camera_walk, demo_room, record_room

    rooms = []
    for k in range(count):
        seed = EVAL_SEED_BASE + k
        room = demo_room(seed)
        rec = record_room(room, camera_walk(room, seed), root, f"room_{seed}")
        rooms.append({"path": str(rec.path), "items": room_eval_items(f"eval/room_{seed}", rec.labels, rec.boxes,
                                                                         rec.viewer, seed)})
    return rooms


def evaluate_checkpoint(checkpoint: Path | None, rooms: list[dict], device: str, max_new_tokens: int,
                        seed: int = 0) -> tuple[dict, list[dict]]:
    """Scores of a checkpoint (None: the tiny untrained model) on the recorded held-out rooms."""
    from gs_reasoner_ros.evaluation.rooms import answer_with_reasoner, score_items
    from gs_reasoner_ros.reasoner import Reasoner
    from gs_reasoner_ros.scene import Scene

    device = "cuda" if device in ("auto", "cuda") and _cuda() else "cpu"
    reasoner = Reasoner.load(None if checkpoint is None else str(checkpoint), device=device, seed=seed,
                             compile=False, warmup=False)
    scored = []
    for room in rooms:
        scene = Scene.load_processed(room["path"])
        scored += [answer_with_reasoner(reasoner, scene, item, max_new_tokens) for item in room["items"]]
    return score_items(scored), scored


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def write_curves(folder: Path, curves: dict[str, list[float]]) -> None:
    """curves.csv (stage, step, loss) and curves.png (both stages, one after the other)."""
    rows = ["stage,step,loss"] + [f"{stage},{k + 1},{loss:.6f}" for stage, losses in curves.items()
                                  for k, loss in enumerate(losses)]
    (folder / "curves.csv").write_text("\n".join(rows) + "\n")
    plot_curves(folder / "curves.png", curves)


def plot_curves(path: Path, curves: dict[str, list[float]], width: int = 720, height: int = 360) -> None:
    """A plain line plot of the losses (Pillow only): x = optimizer step over both stages."""
    from PIL import Image, ImageDraw

    losses = [v for vs in curves.values() for v in vs]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if not losses:
        image.save(path)
        return
    left, right, top, bottom = 60, width - 20, 20, height - 40
    hi, lo = max(losses), min(0.0, min(losses))
    n = max(len(losses) - 1, 1)

    def xy(i, v):
        return left + (right - left) * i / n, bottom - (bottom - top) * (v - lo) / max(hi - lo, 1e-9)

    draw.rectangle([left, top, right, bottom], outline="black")
    colours = {"pretrain": (30, 90, 200), "finetune": (200, 70, 30)}
    start = 0
    for stage, values in curves.items():
        points = [xy(start + i, v) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=colours.get(stage, "black"), width=2)
        if points:
            draw.text((points[0][0] + 4, top + 4 + 14 * list(curves).index(stage)), stage,
                      fill=colours.get(stage, "black"))
        start += len(values)
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        draw.text((4, xy(0, v)[1] - 6), f"{v:.2f}", fill="black")
    draw.text((left, bottom + 10), f"loss per optimizer step ({len(losses)} steps)", fill="black")
    image.save(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    from gs_reasoner_ros.evaluation.rooms import format_scores
    from gs_reasoner_ros.model.demo import build_demo_init_checkpoint, shrink_to_float16
    from gs_reasoner_ros.training.demo_data import write_demo_dataset
    from gs_reasoner_ros.training.trainer import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings, t0 = {}, time.perf_counter()
    init = build_demo_init_checkpoint(out / "init", seed=args.seed)
    paths = write_demo_dataset(out / "data", range(args.train_rooms), workers=args.data_workers)
    eval_rooms = record_eval_rooms(out / "eval_rooms", args.eval_rooms)
    timings["data_s"] = time.perf_counter() - t0
    curves = {}
    checkpoint = init
    for stage, data in (("pretrain", paths["pretrain"]), ("finetune", paths["finetune"])):
        t = time.perf_counter()
        result = train(stage_config(args, stage, checkpoint, data, out / stage))
        curves[stage], checkpoint = result.losses, out / stage
        timings[f"{stage}_s"] = time.perf_counter() - t
        write_curves(out, curves)
    model = out / "model"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(checkpoint, model)
    shrink_to_float16(model)
    t = time.perf_counter()
    scores, scored = evaluate_checkpoint(model, eval_rooms, args.device, args.eval_max_new_tokens, args.seed)
    timings["eval_s"] = time.perf_counter() - t
    baseline, _ = evaluate_checkpoint(init, eval_rooms, args.device, args.eval_max_new_tokens, args.seed)
    report = {"demo": scores, "untrained": baseline, "eval_rooms": args.eval_rooms, "eval_seed_base": EVAL_SEED_BASE,
              "train_rooms": args.train_rooms, "steps": {k: len(v) for k, v in curves.items()},
              "final_loss": {k: v[-1] for k, v in curves.items() if v},
              "timings_s": {k: round(v, 1) for k, v in timings.items()}, "args": vars(args)}
    (out / "scores.json").write_text(json.dumps(report, indent=1))
    (out / "eval_answers.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scored))
    print("demo model on held-out rooms:\n" + format_scores(scores))
    print("untrained start on the same rooms:\n" + format_scores(baseline))
    if args.install:
        install(model, out)
    return 0


def install(model: Path, out: Path) -> None:
    """Weights, curves and scores into the package (the model card stays hand-written)."""
    PACKAGE_DEMO.mkdir(parents=True, exist_ok=True)
    for item in model.iterdir():
        if item.name != "training_args.json":
            shutil.copy2(item, PACKAGE_DEMO / item.name)
    for name in ("curves.csv", "curves.png", "scores.json"):
        shutil.copy2(out / name, PACKAGE_DEMO / name)


if __name__ == "__main__":
    raise SystemExit(main())
