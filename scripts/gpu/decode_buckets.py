"""Decode ms/token of the product's decoder (10,304-slot KV cache) with and without bucketed
attention lengths, on the GPU machine.

    python3 scripts/gpu/decode_buckets.py --out "$OUT"

Qwen2-7B-sized random bf16 weights (as `gs-reasoner bench gpu --llm-only`), the cache sized as
Reasoner.setup_decoder does (32 frames * 210 + 1,536 text + 2,048 new tokens), a 7,281-token
prompt (7,175-token prefix + 106-token question, the product bench's layout). For each
attention_bucket setting: warm-up seconds, median ms/token of a 64- and a 256-token answer on
the follow-up path, one 2,000-token answer (crosses several buckets), and the ids, compared
between settings. Writes summary.json under --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gs_reasoner_ros.bench import _build_model  # noqa: E402
from gs_reasoner_ros.model.generation import GreedyDecoder  # noqa: E402

CACHE = 32 * 210 + 1536 + 2048
PREFIX, QUESTION = 7175, 106


def ms_per_token(dec, question, n: int, repeats: int = 3) -> tuple[float, list[int]]:
    per = []
    for _ in range(repeats):
        ids = dec.generate(question, n, prefix_key="kf").ids.tolist()
        t = dec.last_timings
        per.append(t["decode_s"] / (t["new_tokens"] - 1) * 1e3)
    return statistics.median(per), ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/decode_buckets")
    ap.add_argument("--buckets", default="none,512,1024")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    lm = _build_model(False, device, llm_only=True).language_model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151643, (1, PREFIX + QUESTION), generator=g).to(device)
    with torch.inference_mode():
        embeds = lm.model.embed_tokens(ids)
    prefix, question = embeds[:, :PREFIX], embeds[:, PREFIX:]
    summary, answers = {}, {}
    for name in args.buckets.split(","):
        bucket = None if name == "none" else int(name)
        dec = GreedyDecoder(lm, max_cache_len=CACHE, attention_bucket=bucket)
        warm = dec.warmup()
        dec.prefill(prefix, key="kf")
        r = dict(warmup_s=round(warm, 1), compile=dec.compile, lengths=len(dec.attention_lengths),
                 graphs=len(dec._graphs))
        r["ms_64"], _ = ms_per_token(dec, question, 64)
        r["ms_256"], answers[name] = ms_per_token(dec, question, 256)
        r["ms_2000"], long_ids = ms_per_token(dec, question, 2000, repeats=1)
        answers[name + "_2000"] = long_ids
        summary[name] = r
        print(name, r, flush=True)
        del dec
        torch.cuda.empty_cache()
    ref = args.buckets.split(",")[0]
    for name in args.buckets.split(",")[1:]:
        for suffix in ("", "_2000"):
            a, b = answers[ref + suffix], answers[name + suffix]
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            summary[name][f"ids{suffix or '_256'}_equal_to_{ref}"] = a == b
            summary[name][f"first_diff{suffix or '_256'}"] = first
    print(json.dumps(summary), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
