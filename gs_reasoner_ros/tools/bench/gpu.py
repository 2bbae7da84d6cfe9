"""`gs-reasoner bench gpu`: the full-size architecture end to end, fast path against the naive
transformers path and the hardware floor (see gs_reasoner_ros.tools.bench)."""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gs_reasoner_ros.tools.bench.common import (LanguageOnly, bench_scene, bench_tokenizer, build_model, ceilings,
                                               device_name, env_var, keyframe_store, median_time, prefixed, progress, sync,
                                               timed)

GPU_KEYS = ("decode_ms_per_token", "grounding_s", "cot256_s", "followup_s", "sonata_s", "peak_mem_gb")
DECODE_MODES = {  # name -> GreedyDecoder options
    "eager": dict(use_cuda_graphs=False, compile=False),
    "graph": dict(use_cuda_graphs=True, compile=False),
    "graph-sdpa": dict(use_cuda_graphs=True, compile=False, decode_attention="sdpa"),
    "compile": dict(use_cuda_graphs=True, compile=True),
    "compile-sdpa": dict(use_cuda_graphs=True, compile=True, decode_attention="sdpa"),
    "reduce-overhead": dict(use_cuda_graphs=False, compile="reduce-overhead"),
}
PREFIX_TEXT_TOKENS = 14  # "<|im_start|>system\n...<|im_end|>\n<|im_start|>user\n" before <image>


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
                               ("--followup-tokens", getattr(args, "followup_tokens", None) or 2, 2),
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
        model = build_model(args.tiny, device, args.llm_only)
        progress(f"model built on {device} in {time.perf_counter() - t0:.1f} s")
        scene = bench_scene(frames, args.tiny)
        session = Session(model, scene, n_ground, n_cot, args.question_tokens, args.repeats)
        session.n_followup = getattr(args, "followup_tokens", None)
        result = dict(device=device_name(device), tiny=bool(args.tiny), frames=frames,
                      prompt_tokens=session.prompt_tokens, visual_tokens=session.visual_tokens,
                      grounding_tokens=n_ground, cot_tokens=n_cot)
        result.update(ceilings(device, args.tiny))
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


class Session:
    """One model, one scene and one prompt layout, measured three ways."""

    def __init__(self, model, scene, n_ground: int, n_cot: int, question_tokens: int, repeats: int):
        import torch

        from gs_reasoner_ros.model.configuration import IMAGE_TOKEN_INDEX

        self.model, self.scene, self.repeats = model, scene, repeats
        self.lm = model.language_model
        self.device = model.device
        self.n_ground, self.n_cot = n_ground, n_cot
        self.n_followup: int | None = None  # tokens of the timed follow-up answer (None: n_ground)
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
        t_pre, (pixels, coords) = timed(lambda: self.model.preprocess(self.scene, self.frame_indices), self.device)
        t_enc, visual = timed(lambda: self.model.encode_visual(pixels, coords), self.device)
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
                sync(self.device)
                t0 = time.perf_counter()
                stages, visual = self.visual()
                answer(visual, n)
                sync(self.device)
                runs.setdefault(name, []).append(time.perf_counter() - t0)
                for key, value in stages.items():
                    runs.setdefault(key, []).append(value)
        medians = {k: None if None in v else statistics.median(v) for k, v in runs.items()}
        return medians, visual

    def _median(self, fn) -> float:
        return median_time(fn, self.device, self.repeats)

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

        with env_var(BACKEND_ENV, "sdpa"):
            times, visual = self._queries(lambda v, n: gen(torch.cat(self.embeds(v), dim=1), n))
        full = torch.cat(self.embeds(visual), dim=1)
        first, per_token = [], []
        for _ in range(self.repeats):
            clock = StepClock(self.device)
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
        progress(f"baseline: decode {out['baseline_decode_ms_per_token']:.2f} ms/token, "
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
        progress(f"decoder '{mode}' warm-up {warmup_s:.1f} s")

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
        progress(f"fast: decode {out['decode_ms_per_token']:.2f} ms/token, grounding {out['grounding_s']:.3f} s, "
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
        progress(f"variant {mode}: {out}")
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
        out = prefixed("check_", forced)
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
        out.update(prefixed("check_baseline_", forced))
        same = 0
        for a, b in zip(got.ids.tolist(), hf_ids.tolist()):
            if a != b:
                break
            same += 1
        out["check_leading_tokens_equal_baseline"] = same
        progress(f"check: {out}")
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
        store = keyframe_store(self.scene)
        count = len(self.scene)
        r = Reasoner(self.model, bench_tokenizer(tiny), num_frames=count, max_new_tokens_cap=cap)
        warmup_s = r.setup_decoder(compile="auto" if compile else False)
        progress(f"product: warm-up {warmup_s:.1f} s, KV cache {r.model.decoder.max_cache_len} positions")
        r.eos_token_ids = []
        questions = ("Where is the chair closest to the window?", "How many lamps are in the room?")
        runs: dict[str, list] = {}

        def ask(name, question, task, n, prepare=False, cold=True):
            if cold:
                r.clear_caches()
            if prepare:
                sync(self.device)
                t0 = time.perf_counter()
                r.prepare_frames(store.to_scene(count))
                sync(self.device)
                runs.setdefault("prepare_frames_s", []).append(time.perf_counter() - t0)
            sync(self.device)
            t0 = time.perf_counter()
            answer = r.answer(store.to_scene(count), question, task=task, max_new_tokens=n)
            sync(self.device)
            runs.setdefault(name, []).append(time.perf_counter() - t0)
            for key, value in answer.timings.items():
                runs.setdefault(f"{name}:{key}", []).append(value)
            return answer

        for _ in range(self.repeats):
            for name, task, n in (("grounding", "ground", self.n_ground), ("cot256", "spatial", self.n_cot)):
                ask(f"{name}_s", questions[0], task, n)
                ask(f"{name}_arrival_s", questions[0], task, n, prepare=True)
            ask("followup_s", questions[1], "qa", 1, cold=False)
            ask("followup_total_s", questions[1], "qa", self.n_followup or self.n_ground, cold=False)
        med = {k: statistics.median(v) for k, v in runs.items()}
        out = {k: v for k, v in med.items() if ":" not in k}
        for name in ("grounding_s", "grounding_arrival_s", "followup_total_s"):
            out[f"stages_{name[:-2]}"] = {k.split(":")[1]: round(v, 5) for k, v in med.items()
                                          if k.startswith(name + ":")}
        g = out["stages_followup_total"]
        out.update(decode_ms_per_token=g["decode_s"] / ((self.n_followup or self.n_ground) - 1) * 1e3,
                   followup_tokens=self.n_followup or self.n_ground,
                   sonata_s=out["stages_grounding"].get("sonata_s", 0.0) + out["stages_grounding"].get("pooling_s", 0.0),
                   warmup_s=warmup_s, decode_mode=("compile" if r.model.decoder.compile else
                                                     "graph" if r.model.decoder.use_cuda_graphs else "eager"),
                   kv_cache_positions=r.model.decoder.max_cache_len, kv_cache_gb=r.model.decoder.kv_cache_bytes / 1e9,
                   peak_mem_gb=self._peak_gb(),
                   product_prompt_tokens=len(prompt_ids(r.tokenizer, questions[0], (), "spatial")) - 1 + self.visual_tokens)
        if self.device.type == "cuda":
            out.update(self._pool_check())
        progress(f"product: grounding {out['grounding_s']:.3f} s (frames on arrival {out['grounding_arrival_s']:.3f}),"
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
        if isinstance(self.model, LanguageOnly):
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

        if isinstance(self.model, LanguageOnly):
            return None

        try:
            pixels, coords = self.model.preprocess(self.scene, self.frame_indices)
            with FlopCounterMode(display=False) as counter:
                self.model.encode_visual(pixels, coords)
            per_module = counter.get_flop_counts()
        except Exception as err:  # the floor is informative; its absence must not stop the bench
            progress(f"FLOP count failed: {type(err).__name__}: {err}")
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
        progress(f"vision FLOPs: SigLIP {siglip / 1e12:.2f} T, Sonata+pooling {sonata / 1e12:.2f} T")
        return dict(siglip=float(siglip), sonata=float(sonata))


class StepClock:
    """A logits processor for transformers' generate that only records when each step's logits
    are ready: stamps[0] ends the prefill, the rest are decode steps."""

    def __init__(self, device):
        self.device, self.stamps = device, []
        self.start = time.perf_counter()

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores
