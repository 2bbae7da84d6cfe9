"""Issue 19's memory attacks, replayed against an in-process reasoner_node (tiny model, over
DDS), with the process RSS after each against memory_budget_mb. Prints JSON.

1. map parameters a peer may set (voxel_size 0.005, max_voxels 5e7, map_stride 1), then a
   lifecycle cycle to apply them;
2. max_keyframes 10000 with every keyframe threshold at 0, then the largest max_keyframes the
   budget accepts, filled with 640x480 keyframes, and a question over them;
3. 4096x4096 depth images with 64x64 colour, default keyframe settings otherwise.

    python scripts/memory_attacks.py [--big-frames 40]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gs_reasoner_ros.pipeline import budget  # noqa: E402
from gs_reasoner_ros.ros import dds  # noqa: E402

EVERY_FRAME = dict(keyframe_min_interval_s=0.0, keyframe_min_translation_m=0.0, keyframe_min_rotation_deg=0.0)


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def reconfigure(h, **values) -> dict:
    """Set `values` (each allowed by its range), apply them with a lifecycle cycle; what came of it."""
    from rclpy.parameter import Parameter

    node = h.node
    accepted = all(r.successful for r in node.set_parameters([Parameter(k, value=v) for k, v in values.items()]))
    if node.state == "active":
        node.trigger_deactivate()
    if node.state == "inactive":
        node.trigger_cleanup()
    node.trigger_configure()
    if node.state == "inactive":
        node.trigger_activate()
    return {"set": values, "parameters_accepted": accepted, "state": node.state,
            "refusal": node._configure_error[:300], "rss_mb": rss_mb()}


def largest_keyframes(p) -> int:
    """The largest max_keyframes memory_budget_mb accepts with the other parameters `p`."""
    lo, hi = 1, 100_000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        fits = not budget.refusal(SimpleNamespace(**{**vars(p), "max_keyframes": mid}), model_on_cpu=True)
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    return lo


def feed(h, scene, frames: int, depth_scale: int = 1, color_size: int | None = None) -> None:
    """Publish `frames` frames of `scene` (looping), each stamped now, depth upsampled by
    `depth_scale` and colour shrunk to color_size^2 when given; waits for each to be handled."""
    health = h.node.health
    for i in range(frames):
        j = i % len(scene.rgb)
        depth = np.kron(scene.depth[j], np.ones((depth_scale, depth_scale), np.float32)) if depth_scale > 1 \
            else scene.depth[j]
        rgb = scene.rgb[j][::scene.rgb[j].shape[0] // color_size, ::scene.rgb[j].shape[1] // color_size][
            :color_size, :color_size] if color_size else scene.rgb[j]
        K = scene.intrinsics[j].copy()
        K[:2] *= depth_scale
        done = health.total("integrated") + health.total("rejected")
        h.player.publish_frame(rgb, depth, K, scene.poses[j], time.time())
        h.wait_for(lambda: health.total("integrated") + health.total("rejected") > done, 10.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-frames", type=int, default=40)
    args = parser.parse_args()
    dds.use_bundled_fastdds_profile()
    from gs_reasoner_ros.ros.harness import InProcessNode
    from gs_reasoner_ros.ros.node import load_reasoner
    from gs_reasoner_ros.synthetic import synthetic_scene

    scene, _ = synthetic_scene(seed=2, n_frames=24, width=640, height=480)
    small, _ = synthetic_scene(seed=2, n_frames=24, width=512, height=512)
    h = InProcessNode(dict(map_publish_period_s=0.0, max_new_tokens_limit=8, num_frames=8),
                      reasoner_factory=load_reasoner, namespace="/memory_attacks")
    h.player.wait_for_subscribers(10.0)
    out = {"memory_budget_mb": h.node.p.memory_budget_mb, "rss_start_mb": rss_mb()}
    try:
        defaults = {k: getattr(h.node.p, k) for k in ("voxel_size", "max_voxels", "map_stride", "max_keyframes",
                                                         *EVERY_FRAME)}
        out["map_parameters"] = reconfigure(h, voxel_size=0.005, max_voxels=50_000_000, map_stride=1)
        reconfigure(h, **{k: defaults[k] for k in ("voxel_size", "max_voxels", "map_stride")})
        out["keyframes_10000"] = reconfigure(h, max_keyframes=10_000, **EVERY_FRAME)
        cap = largest_keyframes(h.node.p)
        out["keyframes_at_budget"] = reconfigure(h, max_keyframes=cap)
        t0 = time.monotonic()
        feed(h, scene, cap + 20)
        answer = h.call("ask", timeout=300.0, question="How big is the room?")
        out["keyframes_at_budget"].update(keyframes=len(h.node.keyframes), frames_sent=cap + 20,
                                          question_answered=answer.success, rss_after_mb=rss_mb(),
                                          seconds=round(time.monotonic() - t0, 1))
        out["big_depth"] = reconfigure(h, **{k: defaults[k] for k in ("max_keyframes", *EVERY_FRAME)})
        feed(h, small, args.big_frames, depth_scale=8, color_size=64)  # 4096x4096 depth, 64x64 colour
        kf = h.node.keyframes
        shapes = sorted({tuple(f.depth.shape) for f in kf.frames()}) if len(kf) else []
        out["big_depth"].update(frames_sent=args.big_frames, keyframes=len(kf), keyframe_depth_shapes=shapes,
                                integrated=h.node.health.total("integrated"),
                                rejected=h.node.health.total("rejected"), rss_after_mb=rss_mb())
    finally:
        h.close()
    out["rss_end_mb"] = rss_mb()
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
