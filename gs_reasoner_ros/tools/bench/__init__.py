"""`gs-reasoner bench`: how fast answers and map intake are, against a naive path and the hardware.

`bench gpu` runs the full-size architecture (Qwen2-7B, SigLIP so400m, the released Sonata; random
weights, bf16 on CUDA) end to end from raw RGB-D frames: preprocessing, SigLIP, Sonata, dual-path
pooling, prefill and decode, for a grounding query (64 new tokens), a chain-of-thought query
(256 new tokens) and a follow-up question on the same keyframes. Every figure comes with the
naive transformers path measured in the same run (SDPA attention, `generate`, Sonata on its SDPA
fallback) and with a floor from a measured GEMM rate and copy bandwidth. New tokens are forced
(no eos) so every run decodes exactly N tokens. `--tiny` runs a tiny model on CPU for CI.

`bench node` runs the node process itself with a camera stream and planners' calls over DDS
(gs_reasoner_ros.tools.bench.node): client-side latencies, intake, memory, configure and
shutdown times, with the Reasoner alone measured in the same run for the overhead ratios.

`bench mapping` times the integration of 640x480 RGB-D frames into the 2 cm voxel map (the
frames of ../shared/data/rgbd_3dmatch when present, and rendered synthetic frames) and the intake
rate at 15 and 30 Hz while a busy model call runs in another thread.

Times are medians over `--repeats`; `--json` prints one JSON line (keys in the module's
GPU_KEYS / MAPPING_KEYS).
"""
from __future__ import annotations

import argparse
import json
import sys

from gs_reasoner_ros.tools.bench.common import print_table
from gs_reasoner_ros.tools.bench.gpu import DECODE_MODES, GPU_KEYS, bench_gpu
from gs_reasoner_ros.tools.bench.mapping import MAPPING_KEYS, bench_mapping

__all__ = ["GPU_KEYS", "MAPPING_KEYS", "add_arguments", "bench_gpu", "bench_mapping", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="part", metavar="PART", required=True)
    g = sub.add_parser("gpu", help="end-to-end query latency, baseline and floor (full-size model)")
    g.add_argument("--tiny", action="store_true", help="tiny random model on CPU (CI smoke size)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present, cpu with --tiny)")
    g.add_argument("--frames", type=int, default=None, help="keyframes per query (default 32, 2 with --tiny)")
    g.add_argument("--grounding-tokens", type=int, default=None, help="new tokens of the grounding query (64)")
    g.add_argument("--cot-tokens", type=int, default=None, help="new tokens of the chain-of-thought query (256)")
    g.add_argument("--followup-tokens", type=int, default=None,
                   help="new tokens of the timed follow-up answer (default: --grounding-tokens)")
    g.add_argument("--question-tokens", type=int, default=106,
                   help="prompt tokens after the visual tokens (instruction + question + assistant header)")
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--decode", choices=sorted(DECODE_MODES), default="compile",
                   help="decode step mode of the fast path on CUDA (CPU always runs eager)")
    g.add_argument("--variants", default="", help="comma-separated decode modes to time as well, e.g. eager,compile")
    g.add_argument("--no-baseline", action="store_true", help="skip the naive transformers path")
    g.add_argument("--llm-only", action="store_true",
                   help="language model only, random visual tokens (no SigLIP/Sonata, no vision figures)")
    g.add_argument("--path", choices=("product", "engine", "both"), default="product",
                   help="fast path measured: the Reasoner as the node runs it (caches, warm-up, its KV cache "
                        "sized for --cap), the bare decoder with a tight cache, or both")
    g.add_argument("--cap", type=int, default=2048,
                   help="product path: largest token budget (the node's max_new_tokens_limit)")
    g.add_argument("--no-compile", action="store_true", help="product path: CUDA graphs without torch.compile")
    g.add_argument("--check", action="store_true",
                   help="check the fast path's tokens and logits against a transformers forward pass")
    g.add_argument("--json", action="store_true", help="print one JSON line")
    m = sub.add_parser("mapping", help="voxel-map integration time and intake rate under load")
    m.add_argument("--tiny", action="store_true", help="CI smoke size: few frames, short intake runs")
    m.add_argument("--frames", type=int, default=None, help="synthetic 640x480 frames (default 8, 2 with --tiny)")
    m.add_argument("--repeats", type=int, default=3, help="passes over the frames per device")
    m.add_argument("--rates", default="15,30", help="input rates in Hz for the intake test")
    m.add_argument("--duration", type=float, default=None, help="seconds per intake run (default 5, 1 with --tiny)")
    m.add_argument("--json", action="store_true", help="print one JSON line")
    from gs_reasoner_ros.tools.bench import node as node_bench  # here: its module also runs as a process entry

    n = sub.add_parser("node", help="the node process with a 30 Hz camera and planners' calls over DDS")
    node_bench.add_arguments(n)


def run(args: argparse.Namespace) -> int:
    if args.part == "node":
        from gs_reasoner_ros.tools.bench import node as node_bench

        return node_bench.run(args)
    try:
        result = bench_gpu(args) if args.part == "gpu" else bench_mapping(args)
    except ValueError as err:
        print(f"gs-reasoner bench: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print_table(result, GPU_KEYS if args.part == "gpu" else ())
    return 0
