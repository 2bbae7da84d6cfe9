"""Decode ms/token of GreedyDecoder variants on the product's cache and prompt layout (GPU machine).

    python3 scripts/gpu/decode_variants.py --out "$OUT" --variants '{"name": {GreedyDecoder kwargs}, ...}'

Qwen2-7B-sized random bf16 weights (as `gs-reasoner bench gpu --llm-only`), the cache sized as
Reasoner.setup_decoder does (32 frames * 210 + 1,536 text + 2,048 new tokens), a 7,281-token
prompt (7,175-token prefix + 106-token question, the product bench's layout). Per variant:
warm-up seconds, median ms/token of a 64- and a 256-token answer on the follow-up path, one
2,000-token answer, and whether its ids equal the first variant's (where they part, if they do).
Variants run in the order given; the fused-projection ones re-point the model's weights, which
later variants (fused or not) then read in place. Writes summary.json under --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gs_reasoner_ros.tools.bench.common import build_model  # noqa: E402
from gs_reasoner_ros.model.generation import GreedyDecoder  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

CACHE = 32 * 210 + 1536 + 2048
PREFIX, QUESTION = 7175, 106
# The H100 sweep of 2026-11-24 (CUDA graphs without compile, fused projections) put the split
# kernel at 8.6 us per layer for 32 pieces x 64 slots and 64 x 32, 9.8 for 32 x 32, 10.8 for
# 16 x 64, 14.0 for 16 x 32 (scripts/gpu/results/h100_decode_variants.json); these compare the
# compiled step before and after.
DEFAULT = {
    "matmul-buckets-compile": dict(decode_attention="matmul", fuse_projections=False, compile=True),
    "split32x64-fused-compile": dict(decode_attention="triton", decode_splits=32, decode_block=64, compile=True),
    "split64x32-fused-compile": dict(decode_attention="triton", decode_splits=64, decode_block=32, compile=True),
}


def ms_per_token(dec, question, n: int, repeats: int = 3) -> tuple[float, list[int]]:
    per = []
    for _ in range(repeats):
        ids = dec.generate(question, n, prefix_key="kf").ids.tolist()
        t = dec.last_timings
        per.append(t["decode_s"] / (t["new_tokens"] - 1) * 1e3)
    return statistics.median(per), ids


def kernel_profile(dec, position: int, steps: int = 5) -> tuple[str, dict]:
    """Kernel table of `steps` decode steps at `position` (not graph-replayed, so each kernel is
    seen), and device microseconds per step: all kernels, and the attention kernels alone."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            dec.runner.step_at(position)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    attention = ("_split_kernel", "_combine_kernel", "softmax", "bmm", "flash")

    def us(events) -> float:
        return round(sum(e.device_time for e in events) / steps, 1)

    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25), dict(
        device_us=us(kernels), kernels=len(kernels) // steps,
        attention_like_us=us([e for e in kernels if any(a in e.name for a in attention)]))


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/decode_variants")
    ap.add_argument("--variants", default=None, help="JSON object: name -> GreedyDecoder keyword arguments")
    ap.add_argument("--long", type=int, default=2000, help="tokens of the long answer (0: skip)")
    ap.add_argument("--profile", action="store_true", help="write a kernel table per variant")
    args = ap.parse_args()
    variants = json.loads(args.variants) if args.variants else DEFAULT
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    lm = build_model(False, device, llm_only=True).language_model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151643, (1, PREFIX + QUESTION), generator=g).to(device)
    with torch.inference_mode():
        embeds = lm.model.embed_tokens(ids)
    prefix, question = embeds[:, :PREFIX], embeds[:, PREFIX:]
    summary, answers, ref = {}, {}, None
    for name, options in variants.items():
        dec = GreedyDecoder(lm, max_cache_len=CACHE, **options)
        warm = dec.warmup()
        dec.prefill(prefix, key="kf")
        r = dict(options=options, warmup_s=round(warm, 1), compile=dec.compile, attention=dec.decode_attention,
                 fused=dec.fused[0] is not None, graphs=len(dec.runner.graphs))
        r["ms_64"], _ = ms_per_token(dec, question, 64)
        r["ms_256"], answers[name] = ms_per_token(dec, question, 256)
        if args.profile:
            table, r["profile"] = kernel_profile(dec, PREFIX + QUESTION)
            (out / f"profile_{name}.txt").write_text(table)
        if args.long:
            r[f"ms_{args.long}"], answers[name + "_long"] = ms_per_token(dec, question, args.long, repeats=1)
        if ref is None:
            ref = name
        else:
            for suffix in ("", "_long") if args.long else ("",):
                r[f"first_diff{suffix or '_256'}_vs_{ref}"] = first_difference(answers[ref + suffix], answers[name + suffix])
        summary[name] = r
        print(name, json.dumps(r), flush=True)
        del dec
        torch.cuda.empty_cache()
    print(json.dumps(summary), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
