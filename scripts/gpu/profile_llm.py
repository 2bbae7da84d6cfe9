"""Where the decode and prefill time of the full-size language model goes, on the GPU machine.

    python3 scripts/gpu/profile_llm.py --out "$OUT"

Builds Qwen2-7B-sized random bf16 weights (as `gs-reasoner bench gpu --llm-only` does), then
writes under --out:
  - gemv.txt: time and achieved bandwidth of the decode step's weight matrices alone (one
    (1,H) x W^T product each), against the device copy bandwidth;
  - profile_decode_<mode>.txt: torch.profiler kernel table of decode steps (eager and compiled);
  - profile_prefill.txt: kernel table of the 6,840-token prefill;
  - summary.json: device time per decode step per mode, kernel counts, prefill split.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gs_reasoner_ros.tools.bench.common import build_model, ceilings  # noqa: E402
from gs_reasoner_ros.model.configuration import GSReasonerConfig  # noqa: E402
from gs_reasoner_ros.model.generation import GreedyDecoder  # noqa: E402

PROMPT = 14 + 32 * 210 + 106  # system text + 32 frames of visual tokens + question


def bench_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def gemv_report(lm, copy_tbps: float) -> tuple[str, dict]:
    """Each distinct weight shape of one layer + lm_head as a single-token product."""
    layer = lm.model.layers[0]
    mats = {
        "q_proj": layer.self_attn.q_proj, "k_proj": layer.self_attn.k_proj, "v_proj": layer.self_attn.v_proj,
        "o_proj": layer.self_attn.o_proj, "gate_proj": layer.mlp.gate_proj, "up_proj": layer.mlp.up_proj,
        "down_proj": layer.mlp.down_proj, "lm_head": lm.lm_head,
    }
    lines, total_ms, total_bytes = [], 0.0, 0
    for name, lin in mats.items():
        x = torch.randn(1, 1, lin.in_features, device="cuda", dtype=torch.bfloat16)
        ms = bench_ms(lambda: lin(x))
        nbytes = lin.weight.numel() * 2
        count = 1 if name == "lm_head" else len(lm.model.layers)
        total_ms += ms * count
        total_bytes += nbytes * count
        lines.append(f"{name:<10} {tuple(lin.weight.shape)!s:<16} {ms * 1e3:8.1f} us  {nbytes / ms / 1e9:6.2f} TB/s"
                     f"  (x{count})")
    lines.append(f"sum of products per token: {total_ms:.3f} ms for {total_bytes / 1e9:.2f} GB "
                 f"= {total_bytes / total_ms / 1e9:.2f} TB/s; copy bandwidth {copy_tbps:.2f} TB/s "
                 f"-> floor {total_bytes / copy_tbps / 1e9:.3f} ms")
    return "\n".join(lines), dict(gemv_ms_per_token=total_ms, weight_gb=total_bytes / 1e9)


def fp32_check(layers: int = 4, new_tokens: int = 32) -> dict:
    """Float32 on the GPU, full width but `layers` layers: the fast path (prefix + question, and
    whole prompt; CUDA graphs, with and without torch.compile) must produce exactly the token ids
    of transformers' greedy generate."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(1)
    with torch.device("cuda"):
        lm = Qwen2ForCausalLM(GSReasonerConfig(num_hidden_layers=layers).text_config()).eval()
    scale = lm.model.embed_tokens.weight.std()
    prompt = torch.randn(1, PROMPT, lm.config.hidden_size, device="cuda") * scale
    hf = lm.generate(inputs_embeds=prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                     eos_token_id=None, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    ref_ids, ref_logits = hf.sequences[0].tolist(), hf.scores[0][0].float().cpu()
    out = {"fp32_unique_tokens": len(set(ref_ids))}
    split = PROMPT - 106
    for name, options in (("graph", {}), ("compile", dict(compile=True))):
        dec = GreedyDecoder(lm, max_cache_len=PROMPT + 64, **options)
        out[f"fp32_warmup_s_{name}"] = dec.warmup()
        key = dec.prefill(prompt[:, :split])
        follow = dec.generate(prompt[:, split:], new_tokens, prefix_key=key)
        whole = dec.generate(prompt, new_tokens)
        rel = float((whole.last_prompt_logits - ref_logits).norm() / ref_logits.norm())
        out[f"fp32_{name}_ids_equal_whole"] = whole.ids.tolist() == ref_ids
        out[f"fp32_{name}_ids_equal_prefix"] = follow.ids.tolist() == ref_ids
        out[f"fp32_{name}_prompt_logits_rel_err"] = rel
        dec = None
    print(out, flush=True)
    return out


def profile_table(fn, steps: int) -> tuple[str, float, int]:
    """Kernel table; device microseconds per step; kernels per step."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    table = events.table(sort_by="self_cuda_time_total", row_limit=40)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    device_us = sum(e.device_time for e in kernels) if kernels else 0.0
    return table, device_us / steps, len(kernels) // max(steps, 1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=240, help="skip remaining stages past this time")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary: dict = {}

    def write_summary():
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))

    with torch.inference_mode():
        summary.update(fp32_check())
        write_summary()
        torch.cuda.empty_cache()
        summary.update(ceilings(torch.device("cuda"), tiny=False))
        lm = build_model(False, torch.device("cuda"), llm_only=True).language_model
        text, gemv = gemv_report(lm, summary["copy_tbps"])
        (args.out / "gemv.txt").write_text(text)
        summary.update(gemv)
        print(text, flush=True)

        scale = lm.model.embed_tokens.weight.float().std()
        prompt = torch.randn(1, PROMPT, lm.config.hidden_size, device="cuda", dtype=torch.bfloat16) * scale

        # prefill: ours (prefix + question) against transformers' forward
        dec = GreedyDecoder(lm, max_cache_len=PROMPT + 320, use_cuda_graphs=False)
        split = PROMPT - 106
        ours_ms = bench_ms(lambda: (dec.prefill(prompt[:, :split], key="p"),
                                    dec.generate(prompt[:, split:], 1, prefix_key="p")), reps=5)
        hf_ms = bench_ms(lambda: lm(inputs_embeds=prompt, logits_to_keep=1), reps=5)
        q_ms = bench_ms(lambda: dec.generate(prompt[:, split:], 1, prefix_key="p"), reps=10)
        summary.update(prefill_ours_ms=ours_ms, prefill_hf_ms=hf_ms, question_prefill_ms=q_ms)
        table, us, n = profile_table(lambda: lm(inputs_embeds=prompt, logits_to_keep=1), steps=1)
        (args.out / "profile_prefill.txt").write_text(table)
        table, us, n = profile_table(lambda: dec.generate(prompt[:, split:], 1, prefix_key="p"), steps=3)
        (args.out / "profile_question_prefill.txt").write_text(table)
        print(f"prefill {PROMPT} tokens: ours {ours_ms:.1f} ms, transformers {hf_ms:.1f} ms; "
              f"question ({PROMPT - split} tokens) after cached prefix {q_ms:.2f} ms", flush=True)
        write_summary()

        for mode, options in (("eager", {}), ("compile", dict(compile=True))):
            if time.perf_counter() - t_start > args.budget_s:
                summary[f"skipped_{mode}"] = True
                break
            dec = GreedyDecoder(lm, max_cache_len=PROMPT + 320, use_cuda_graphs=False, **options)
            summary[f"warmup_s_{mode}"] = dec.warmup()
            dec.prefill(prompt, key="p")
            # the step writing the token after the prompt, never a graph replay
            step = functools.partial(dec.runner.step_at, PROMPT, compiled=mode == "compile")
            table, us, n = profile_table(step, steps=5)
            (args.out / f"profile_decode_{mode}.txt").write_text(table)
            summary[f"decode_device_ms_{mode}"] = us / 1e3
            summary[f"decode_kernels_{mode}"] = n
            summary[f"decode_wall_ms_{mode}"] = bench_ms(step, reps=10)
            print(f"decode step {mode}: {us / 1e3:.3f} ms device time in {n} kernels", flush=True)
            write_summary()
            dec = None
        summary["elapsed_s"] = time.perf_counter() - t_start
        summary["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        write_summary()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
