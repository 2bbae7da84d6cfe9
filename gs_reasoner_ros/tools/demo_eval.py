"""`gs-reasoner demo-eval`: held-out generated rooms through a running node's ~/ground and ~/ask.

    gs-reasoner demo-eval [--rooms 50] [--checkpoints demo tiny] [--json FILE] [--device cpu]

For every checkpoint a reasoner_node is built in this process (ros/harness.InProcessNode, the
node's own model factory) and, room after room (seeds from demo_recipe.EVAL_SEED_BASE on, never
used in training): ~/clear, the room's camera loop replayed on the camera topics and /tf, then
every grounding description on ~/ground and every counting / size / distance question on ~/ask
(grounded chain of thought). Boxes come back in the world frame and are scored against the true
ones there (evaluation/rooms.py: ScanRefer Acc@0.25/0.5, counting accuracy, VSI-Bench MRA).
"""
from __future__ import annotations

import json
import sys
import time


def add_arguments(p) -> None:
    p.add_argument("--rooms", type=int, default=50, help="held-out rooms (seeds EVAL_SEED_BASE ...)")
    p.add_argument("--checkpoints", nargs="+", default=["demo", "tiny"], help="node checkpoint values to compare")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-frames", type=int, default=32, help="keyframes per query (node parameter)")
    p.add_argument("--max-new-tokens", type=int, default=160, help="token budget per question")
    p.add_argument("--rate", type=float, default=20.0, help="replay rate, frames per second")
    p.add_argument("--json", help="write scores and per-question outcomes here")


def room_session(node, seed: int, rate: float, max_new_tokens: int) -> list[dict]:
    """One held-out room through the node: replay, then every question; scored items."""
    import numpy as np

    from gs_reasoner_ros.evaluation.rooms import GROUND, item_score, room_eval_items
    from gs_reasoner_ros.scene import Scene
    from gs_reasoner_ros.tools.demo import _world_aabb
    from gs_reasoner_ros.training.rooms import camera_walk, demo_room, model_frame_boxes, render_views

    room = demo_room(seed)
    views = render_views(room, camera_walk(room, seed))
    scene = Scene(np.stack([v.rgb for v in views]), np.stack([v.depth for v in views]), views[0].K,
                  np.stack([v.pose for v in views]))
    node.call("clear")
    stamps = node.player.play(scene, rate)
    if node.probe.cloud_at(stamps[-1], 60.0) is None:
        raise RuntimeError(f"room {seed}: the node's map never included the last frame")
    labels, boxes = model_frame_boxes(room, np.eye(4))  # world frame (the room is not turned)
    scored = []
    for item in room_eval_items(f"eval/room_{seed}", labels, boxes, scene.poses[0], seed):
        if item["kind"] == GROUND:
            r = node.call("ground", timeout=600.0, description=item["question"], max_new_tokens=max_new_tokens)
            scored.append(item_score(item, [_world_aabb(o) for o in r.objects] if r.success else []))
        else:
            r = node.call("ask", timeout=600.0, question=item["question"], max_new_tokens=max_new_tokens)
            scored.append(item_score(item, None, r.reasoning if r.success else ""))
    return scored


def evaluate_node(checkpoint: str, args) -> tuple[dict, list[dict]]:
    from gs_reasoner_ros.evaluation.rooms import score_items
    from gs_reasoner_ros.ros.harness import InProcessNode
    from gs_reasoner_ros.ros.node import load_reasoner
    from gs_reasoner_ros.training.demo_recipe import EVAL_SEED_BASE

    node = InProcessNode({"checkpoint": checkpoint, "device": args.device, "num_frames": args.num_frames,
                          "keyframe_min_interval_s": 0.0, "map_publish_period_s": 0.2}, load_reasoner)
    scored = []
    try:
        node.player.wait_for_subscribers(20.0)
        for k in range(args.rooms):
            t = time.monotonic()
            scored += room_session(node, EVAL_SEED_BASE + k, args.rate, args.max_new_tokens)
            print(f"[demo-eval] {checkpoint}: room {k + 1}/{args.rooms} in {time.monotonic() - t:.1f} s",
                  file=sys.stderr)
    finally:
        node.close()
    return score_items(scored), scored


def run(args) -> int:
    from gs_reasoner_ros.evaluation.rooms import format_scores
    from gs_reasoner_ros.ros import dds

    dds.use_bundled_fastdds_profile()
    report, outcomes = {}, {}
    for checkpoint in args.checkpoints:
        t = time.monotonic()
        report[checkpoint], outcomes[checkpoint] = evaluate_node(checkpoint, args)
        report[checkpoint]["seconds"] = round(time.monotonic() - t, 1)
        print(f"checkpoint {checkpoint} on {args.rooms} held-out rooms through ~/ground and ~/ask "
              f"({report[checkpoint]['seconds']} s):")
        print(format_scores({k: v for k, v in report[checkpoint].items() if k != "seconds"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scores": report, "rooms": args.rooms, "outcomes": outcomes}, f, indent=1)
    return 0
