"""Issue 19's memory-that-never-comes-back measurement: ROUNDS rounds of frames, a question and a
lifecycle cycle (deactivate, cleanup, configure, activate) on an in-process reasoner_node with
the tiny model; prints the process RSS after each round as JSON. `--no-trim` replaces the heap
trim after the memory is dropped with nothing, to measure what the trim buys.

    python scripts/lifecycle_rounds.py --rounds 30 [--no-trim]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gs_reasoner_ros.pipeline import budget  # noqa: E402
from gs_reasoner_ros.ros import dds  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--no-trim", action="store_true")
    args = parser.parse_args()
    if args.no_trim:
        budget.trim_heap = lambda: False
    dds.use_bundled_fastdds_profile()
    from gs_reasoner_ros.ros.harness import InProcessNode
    from gs_reasoner_ros.ros.node import load_reasoner
    from gs_reasoner_ros.synthetic import synthetic_scene

    scene, _ = synthetic_scene(seed=1, n_frames=args.frames, width=320, height=240)
    h = InProcessNode(dict(num_frames=4, keyframe_min_interval_s=0.0, max_new_tokens_limit=8,
                           map_publish_period_s=0.0), reasoner_factory=load_reasoner)
    h.player.wait_for_subscribers(10.0)
    proc, rss = psutil.Process(), []
    try:
        for r in range(args.rounds):
            before = h.node.health.total("integrated") if h.node.intake else 0
            h.player.play(scene, rate_hz=20.0, clock=time.time)
            h.wait_for(lambda: h.node.health.total("integrated") >= before + args.frames, 15.0)
            h.call("ask", timeout=120.0, question="How big is the room?")
            for step in ("deactivate", "cleanup", "configure", "activate"):
                getattr(h.node, f"trigger_{step}")()
            rss.append(round(proc.memory_info().rss / 2**20, 1))
            print(f"round {r + 1}: RSS {rss[-1]} MB", file=sys.stderr, flush=True)
    finally:
        h.close()
    print(json.dumps({"trim": not args.no_trim, "rounds": args.rounds, "rss_mb": rss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
