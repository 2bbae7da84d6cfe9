#!/usr/bin/env python3
"""GPU memory over many queries (issue 7): the Reasoner as reasoner_node runs it, on changing keyframes.

Full-size random weights (bf16 LLM, fp16 SigLIP, fp32 Sonata) with the node's fast path (warm-up,
per-frame/visual/prefix caches). Keyframes arrive as in the node (prepare_frames on arrival) along
a rendered camera loop; every query uses the newest `--frames` of them, so most queries see a new
keyframe set (cache misses) and some are follow-ups (hits). After each query it records
torch.cuda.memory_allocated / memory_reserved and the process RSS; prints a summary JSON.

    python3 scripts/gpu/soak_model_memory.py --queries 150 --out $OUT   # on the GPU machine
    python3 scripts/gpu/soak_model_memory.py --tiny --queries 6          # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=150)
    p.add_argument("--frames", type=int, default=32, help="keyframes per query")
    p.add_argument("--loop-frames", type=int, default=64, help="rendered frames, replayed cyclically")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import psutil
    import torch

    from gs_reasoner_ros.tools.bench.common import bench_scene, bench_tokenizer, build_model
    from gs_reasoner_ros.reasoner import Reasoner

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    cuda = device.type == "cuda"
    model = build_model(args.tiny, device)
    loop = bench_scene(args.loop_frames, args.tiny)
    reasoner = Reasoner(model, bench_tokenizer(args.tiny), num_frames=args.frames, max_new_tokens_cap=2048)
    warmup_s = reasoner.setup_decoder(compile="auto") if cuda else 0.0
    proc = psutil.Process(os.getpid())
    rows, t_start = [], time.perf_counter()
    for q in range(args.queries):
        # one new keyframe per query (with a pose drift, so a lap of the loop is new data again),
        # every third query a follow-up on the same keyframes
        newest = q if q % 3 else max(q - 1, 0)
        idx = [(newest - k) % args.loop_frames for k in range(args.frames)][::-1]
        scene = loop.select(idx)
        scene.poses[:, 2, 3] += 0.01 * (newest // args.loop_frames)
        reasoner.prepare_frames(scene.select([len(idx) - 1]))
        t0 = time.perf_counter()
        answer = reasoner.answer(scene, "Where is the sofa?", task="ground", max_new_tokens=32)
        row = dict(query=q, latency_s=time.perf_counter() - t0, rss_mb=proc.memory_info().rss / 2**20,
                   visual_hit=answer.timings.get("visual_cache_hit", 0.0))
        if cuda:
            torch.cuda.synchronize()
            row.update(allocated_gb=torch.cuda.memory_allocated() / 1e9, reserved_gb=torch.cuda.memory_reserved() / 1e9)
        rows.append(row)
    warm = rows[len(rows) // 10:]
    summary = dict(device=str(device), queries=len(rows), warmup_s=warmup_s, wall_s=time.perf_counter() - t_start,
                   latency_median_s=float(np.median([r["latency_s"] for r in rows])),
                   visual_cache_hits=int(sum(r["visual_hit"] for r in rows)))
    for key in ("rss_mb", "allocated_gb", "reserved_gb"):
        if key in rows[0]:
            values = [r[key] for r in warm]
            summary[key] = dict(after_warmup=values[0], end=values[-1], max=max(values), min=min(values),
                                slope_per_100_queries=float(np.polyfit(np.arange(len(values)), values, 1)[0] * 100))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "soak_model_memory.json").write_text(json.dumps(dict(summary=summary, rows=rows), indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
