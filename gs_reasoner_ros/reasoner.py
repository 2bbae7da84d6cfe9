"""The Reasoner: one object that turns (scene, question) into an Answer. ROS-free.

The node and `gs-reasoner infer` both call it. It owns the model and the tokenizer, picks the
frames, builds the prompt, runs the model and parses the text; every stage is timed.
Boxes come back in the MODEL frame (scene.axis_align applied, axis-aligned); callers that
work in the world frame rotate them back with the inverse of scene.axis_align.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .questions import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_CAP, MAX_QUESTION_CHARS, check_query  # noqa: F401
from .reasoning import (
    IMAGE_TOKEN_INDEX,
    Answer,
    Progress,
    StreamParser,
    assign_confidences,
    parse_output,
    prompt_ids,
    token_spans,
)

log = logging.getLogger(__name__)

# Prompt text the decoder's static KV cache leaves room for besides the visual tokens and the
# token budget: the template (~450 tokens with the chain-of-thought instruction) plus a long
# question. The cache length is also the decode step's attention width, so it is kept tight.
TEXT_TOKENS_ALLOWANCE = 1536
FRAME_CACHE_SIZE = 256  # per-keyframe preprocessing kept (~4 MB each on the model's device)
VISUAL_CACHE_SIZE = 2  # keyframe sets whose visual tokens are kept (~48 MB each at full size)
INDUCTOR_CACHE = os.path.join("~", ".cache", "gs_reasoner_ros", "inductor")

_DTYPES = ("float32", "bfloat16", "float16")
_tiny_lock = threading.Lock()


@dataclass
class InferenceResult:
    """An Answer plus the tensors behind it (for --dump and debugging)."""

    answer: Answer
    prompt_ids: np.ndarray  # int64, one IMAGE_TOKEN_INDEX entry where the visual tokens go
    visual_embeds: np.ndarray  # float32 (frames*210, hidden)
    last_logits: np.ndarray  # float32 (vocab,), at the last prompt position
    generated_ids: np.ndarray  # int64
    token_probs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64, per generated token
    frame_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {name!r}")
    return getattr(torch, name)


def _check_device(device: str) -> str:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    return str(dev)


def tiny_checkpoint_dir(seed: int = 0) -> str:
    """A tiny random official-layout checkpoint for `seed`, built once into the user's cache
    folder and reused by every later process (a temporary folder per start was left behind by
    every process that ended without interpreter teardown). The folder name carries a digest of
    the model code that writes it, so a changed model gets a new folder."""
    import hashlib
    import shutil
    from pathlib import Path

    from .model.tiny import build_tiny_checkpoint

    sources = sorted((Path(__file__).parent / "model").glob("*.py"))
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sources)).hexdigest()
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")),
                        "gs_reasoner_ros", "tiny")
    target = os.path.join(root, f"seed{seed}-{digest[:12]}")
    with _tiny_lock:
        if not os.path.isfile(os.path.join(target, "config.json")):
            os.makedirs(root, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=f".seed{seed}-", dir=root)
            try:
                build_tiny_checkpoint(staging, seed=seed)
                os.rename(staging, target)  # atomic: other processes see all of it or none
            except OSError:
                if not os.path.isfile(os.path.join(target, "config.json")):
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target


def resolve_checkpoint(checkpoint: str | None) -> tuple[str | None, str]:
    """(folder, note) for a checkpoint name: "tiny" or None -> (None, "") the untrained tiny
    model; "demo" -> the shipped demo model's folder and the note every answer carries
    (ValueError when this install has no demo weights); any other name is a folder."""
    from .model.demo import DEMO, DEMO_NOTE, TINY, demo_checkpoint_dir

    if checkpoint is None or checkpoint == TINY:
        return None, ""
    if checkpoint == DEMO:
        folder = demo_checkpoint_dir()
        if folder is None:
            raise ValueError("the demo model's weights are not installed (gs_reasoner_ros/models/demo); "
                             "scripts/train_demo_model.sh makes them")
        return folder, DEMO_NOTE
    return os.fspath(checkpoint), ""


def warmup_scene(n_frames: int, width: int = 160, height: int = 120):
    """Frames of a camera turning inside a 4 x 4 x 2.5 m box: enough points and pixels for every
    kernel the model picks at its first real question (the content does not matter)."""
    from .geometry import rotation_z
    from .scene import Scene

    rng = np.random.default_rng(0)
    f = 0.8 * width
    K = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    rows = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    depth = np.broadcast_to(2.0 + 0.5 * np.abs(rows), (height, width)).astype(np.float32)  # floor and ceiling
    optical = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    poses = []
    for i in range(n_frames):
        T = rotation_z(2 * np.pi * i / max(n_frames, 1)) @ optical  # optical axes: z forward, y down
        T[2, 3] = 1.2
        poses.append(T)
    rgb = rng.integers(0, 256, (n_frames, height, width, 3), dtype=np.uint8)
    return Scene(rgb, np.repeat(depth[None], n_frames, axis=0), K, np.stack(poses))


def _check_finite(out) -> None:
    """Refuse an answer decoded from NaN/inf logits (broken weights, fp16 overflow): greedy
    decoding would still emit tokens, and they would read like an answer."""
    import torch

    probs = torch.as_tensor(out.token_probs)
    if not (bool(torch.isfinite(out.last_prompt_logits).all()) and bool(torch.isfinite(probs).all())):
        raise FloatingPointError("the language model produced NaN/inf logits (corrupt weights, or an overflow "
                                 "in float16: try dtype bfloat16 or float32)")


class _Stream:
    """The decoder's on_token for a streamed answer: parses as tokens come and tells the
    caller; remembers whether the caller asked to stop."""

    def __init__(self, tokenizer, on_progress: Callable[[Progress], bool]):
        self.parser, self.on_progress, self.stopped = StreamParser(tokenizer), on_progress, False

    def __call__(self, index: int, token: int, prob: float) -> bool:
        self.stopped = bool(self.on_progress(self.parser.feed(token, prob)))
        return self.stopped


class Reasoner:
    """GS-Reasoner behind one `answer()` call. Thread-safe: queries run one at a time."""

    def __init__(self, model, tokenizer, *, deterministic: bool = True, num_frames: int = 32, seed: int = 0,
                 untrained: bool = False, checkpoint: str | None = None,
                 max_question_chars: int = MAX_QUESTION_CHARS, max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
                 frame_cache_size: int = FRAME_CACHE_SIZE):
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        self.model = model
        self.tokenizer = tokenizer
        self.deterministic = bool(deterministic)
        self.num_frames = int(num_frames)
        self.seed = int(seed)
        self.untrained = bool(untrained)
        self.checkpoint = checkpoint
        self.max_question_chars = int(max_question_chars)
        self.max_new_tokens_cap = int(max_new_tokens_cap)
        self.eos_token_ids = [i for i in (tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                          tokenizer.convert_tokens_to_ids("<|endoftext|>")) if i is not None]
        self._lock = threading.Lock()
        from collections import OrderedDict

        from .model.preprocess import FrameCache

        self.model_note = ""  # what the answers' users must know about these weights (the demo model)
        self.frame_cache = FrameCache(getattr(model, "device", "cpu"), capacity=int(frame_cache_size),
                                      crop=int(getattr(model, "image_size", 384)))  # the model's frame size
        self._visual_cache: OrderedDict = OrderedDict()
        self.warmup_s: float | None = None

    @classmethod
    def load(cls, checkpoint: str | None = None, *, device: str = "cpu", dtype: str = "float32",
             deterministic: bool = True, vision_tower: str | None = None, num_frames: int = 32,
             seed: int = 0, max_question_chars: int = MAX_QUESTION_CHARS,
             max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP, compile: bool | str = "auto",
             warmup: bool = True, frame_cache_size: int = FRAME_CACHE_SIZE) -> "Reasoner":
        """Load a checkpoint folder (official GS-Reasoner layout), or a tiny untrained model if None.

        deterministic=True fixes the point chosen per voxel and the serialization order (the node's
        default); False reproduces the authors' random choices from `seed` (which also seeds the
        tiny model's weights). Queries longer than max_question_chars (question + options) or
        asking more than max_new_tokens_cap tokens are refused with ValueError.

        On CUDA the language model decodes through a GreedyDecoder (static KV cache, CUDA graphs,
        torch.compile unless compile=False) sized for num_frames keyframes, the prompt and
        max_new_tokens_cap; with warmup=True (default) it is compiled, captured and every stage
        run once here, so the first question pays none of it (logged, and kept in warmup_s).
        torch.compile's cache goes to ~/.cache/gs_reasoner_ros/inductor unless
        TORCHINDUCTOR_CACHE_DIR is set.
        """
        import torch

        from .model import GSReasonerForCausalLM
        from .model.tokenizer import build_tiny_tokenizer, load_tokenizer

        torch_dtype = _torch_dtype(dtype)
        device = _check_device(device)
        checkpoint, note = resolve_checkpoint(checkpoint)
        untrained = checkpoint is None
        if untrained:
            log.warning("NO CHECKPOINT GIVEN: using a tiny model with RANDOM weights; its answers are "
                        "meaningless. Pass the GS-Reasoner folder (ymccccc/GS-Reasoner) as the checkpoint.")
            path = tiny_checkpoint_dir(seed)
        else:
            path = os.fspath(checkpoint)
            if not os.path.isdir(path):
                raise ValueError(f"checkpoint folder {path!r} does not exist")
        if vision_tower is not None and not os.path.isdir(vision_tower):
            raise ValueError(f"vision tower folder {vision_tower!r} does not exist")
        model = GSReasonerForCausalLM.from_pretrained(path, vision_tower=vision_tower, device=device,
                                                      dtype=torch_dtype)
        model.eval()
        try:
            tokenizer = load_tokenizer(path)
        except Exception as err:  # noqa: BLE001
            if untrained and isinstance(err, ValueError):
                tokenizer = build_tiny_tokenizer()
            elif type(err) is ValueError:  # load_tokenizer's own, which names the folder
                raise
            else:  # corrupt files raise JSONDecodeError, OSError, tokenizers' own errors
                files = sorted(n for n in os.listdir(path) if n.startswith(("tokenizer", "vocab", "merges")))
                raise ValueError(f"{path}: cannot read the tokenizer ({', '.join(files) or 'no files'}): "
                                 f"{type(err).__name__}: {err}") from None
        reasoner = cls(model, tokenizer, deterministic=deterministic, num_frames=num_frames, seed=seed,
                       untrained=untrained, checkpoint=None if untrained else path,
                       max_question_chars=max_question_chars, max_new_tokens_cap=max_new_tokens_cap,
                       frame_cache_size=frame_cache_size)
        reasoner.model_note = note
        if note:
            log.warning("%s", note)
        if torch.device(device).type == "cuda":
            reasoner.setup_decoder(compile=compile, warmup=warmup)
        return reasoner

    # ---- fast path ------------------------------------------------------------------

    def max_cache_len(self) -> int:
        """KV cache positions the decoder needs: visual tokens of num_frames keyframes, the
        prompt text (TEXT_TOKENS_ALLOWANCE) and max_new_tokens_cap."""
        per_frame = int(getattr(self.model, "tokens_per_frame", 210))
        return self.num_frames * per_frame + TEXT_TOKENS_ALLOWANCE + self.max_new_tokens_cap

    def setup_decoder(self, *, compile: bool | str = "auto", warmup: bool = True) -> float:
        """Build the model's GreedyDecoder (compile: "auto", True, False) and, with warmup, run
        every stage once on a synthetic scene (compilation, graph capture, kernel selection).
        Returns the seconds taken."""
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.expanduser(INDUCTOR_CACHE))
        t0 = time.perf_counter()
        self.model.setup_decoder(self.max_cache_len(), compile=compile, warmup=warmup)
        if warmup:
            self._warm_stages()
        self.warmup_s = time.perf_counter() - t0
        log.info("decoder ready in %.1f s (compile=%s, KV cache %d positions, %.2f GB)%s", self.warmup_s,
                 self.model.decoder.compile, self.model.decoder.max_cache_len,
                 self.model.decoder.kv_cache_bytes / 1e9, "" if warmup else ", not warmed up")
        return self.warmup_s

    def _warm_stages(self) -> None:
        """One question on a small generated scene: the vision kernels' first-call costs (cuDNN
        and cuBLAS choices, spconv tuning) are paid here; the caches are emptied after."""
        scene = warmup_scene(min(self.num_frames, 4))
        eos, self.eos_token_ids = self.eos_token_ids, []
        try:
            self._query(scene, "warm-up", (), "spatial", 4, tensors=False)
            self._query(scene, "warm-up, again", (), "spatial", 4, tensors=False)  # the prefix-hit path
        finally:
            self.eos_token_ids = eos
            self.clear_caches()

    def clear_caches(self) -> None:
        """Forget the per-frame preprocessing, the visual tokens and the cached prompt prefixes."""
        with self._lock:
            self._drop_caches()

    def _drop_caches(self, zero_kv: bool = False) -> None:  # with self._lock held
        self.frame_cache.clear()
        self._visual_cache.clear()
        decoder = getattr(self.model, "decoder", None)
        if decoder is not None:
            if zero_kv:  # NaN left in the static KV cache would reach later answers
                decoder.reset()
            else:
                decoder.drop_prefixes()

    def prepare_frames(self, scene) -> int:
        """Do the per-frame preprocessing of every frame of `scene` now (e.g. as keyframes arrive)
        so a question on them only applies the poses. Returns how many frames were new."""
        with self._lock:
            before = self.frame_cache.misses
            self.frame_cache.add(scene)
            return self.frame_cache.misses - before

    # ---- queries ------------------------------------------------------------------

    def check_query(self, question: str, options: Sequence[str] = (), task: str = "spatial",
                    max_new_tokens: int | None = None) -> int:
        """`check_query` with this reasoner's limits."""
        return check_query(question, options, task, max_new_tokens, max_question_chars=self.max_question_chars,
                           max_new_tokens_cap=self.max_new_tokens_cap)

    def answer(self, scene, question: str, *, options: Sequence[str] = (), task: str = "spatial",
               max_new_tokens: int | None = None, on_progress: Callable[[Progress], bool] | None = None
               ) -> Answer:
        """Answer one question about `scene` (a gs_reasoner_ros.scene.Scene).

        task "spatial" uses the grounded chain-of-thought prompt (options make it multiple
        choice); "ground" and "qa" the direct-answer prompt. max_new_tokens None or 0 means
        DEFAULT_MAX_NEW_TOKENS[task]. Boxes are in the model (axis-aligned) frame.

        Per-frame preprocessing, the visual tokens and the KV of the prompt up to the visual tokens
        are cached, keyed by the keyframes' content, poses, axis_align and the sampling mode, so a
        follow-up question on the same keyframes only runs its own text (timings:
        visual_cache_hit, prefix_cache_hit, frames_preprocessed).

        on_progress(Progress) streams the answer: called on this thread after every token with the
        text so far and the boxes closed so far; a truthy return stops generation after that token
        (the Answer then says stopped=True; caches stay valid for the next question).
        """
        budget = self.check_query(question, options, task, max_new_tokens)
        return self._query(scene, question, tuple(options), task, budget, tensors=False,
                           on_progress=on_progress).answer

    def run(self, scene, question: str, *, options: Sequence[str] = (), task: str = "spatial",
            max_new_tokens: int | None = None) -> InferenceResult:
        """`answer()` plus the prompt ids, visual tokens, last prompt logits and generated ids."""
        budget = self.check_query(question, options, task, max_new_tokens)
        return self._query(scene, question, tuple(options), task, budget, tensors=True)

    def _visual(self, scene, frames, timings: dict):
        """Visual tokens of scene's `frames`, from the cache when the same keyframes were seen."""
        import torch

        before = self.frame_cache.misses
        keys = self.frame_cache.add(scene, frames)
        idx = np.asarray(frames)
        key = (tuple(keys), scene.poses[idx].tobytes(), scene.axis_align.tobytes(), self.deterministic, self.seed)
        timings["frames_preprocessed"] = float(self.frame_cache.misses - before)
        visual = self._visual_cache.get(key)
        timings["visual_cache_hit"] = float(visual is not None)
        t0 = time.perf_counter()
        if visual is not None:
            self._visual_cache.move_to_end(key)
            timings.update(preprocess_s=t0 - timings["start"], encode_s=0.0)
            return key, visual, {}
        pixel_values, world_coords = self.model.preprocess(scene, frames, cache=self.frame_cache, keys=keys)
        t1 = time.perf_counter()
        generator = None if self.deterministic else torch.Generator().manual_seed(self.seed)
        visual = self.model.encode_visual(pixel_values, world_coords, deterministic=self.deterministic,
                                          generator=generator)
        stages = dict(getattr(self.model, "timings", None) or {})  # read under the lock
        timings.update(preprocess_s=t1 - timings["start"], encode_s=time.perf_counter() - t1)
        self._visual_cache[key] = visual
        while len(self._visual_cache) > VISUAL_CACHE_SIZE:
            self._visual_cache.popitem(last=False)
        return key, visual, stages

    def _query(self, scene, question: str, options: tuple, task: str, budget: int, *, tensors: bool,
               on_progress: Callable[[Progress], bool] | None = None) -> InferenceResult:
        import torch

        timings: dict[str, float] = {}
        stream = _Stream(self.tokenizer, on_progress) if on_progress is not None else None
        with self._lock, torch.inference_mode():
            t0 = timings["start"] = time.perf_counter()
            frames = scene.uniform_indices(self.num_frames)
            try:
                visual_key, visual, stages = self._visual(scene, frames, timings)
                t2 = time.perf_counter()
                ids = prompt_ids(self.tokenizer, question, options, task)
                # The text before <image> is the same for every task; it and the visual tokens are the prefix.
                prefix_key = (visual_key, tuple(ids[:ids.index(IMAGE_TOKEN_INDEX)]))
                streaming = {} if stream is None else {"on_token": stream}  # models without streaming still serve
                out = self.model.generate(ids, visual, budget, self.eos_token_ids, prefix_key=prefix_key, **streaming)
                _check_finite(out)
            except BaseException:
                self._drop_caches(zero_kv=True)  # a failure (NaN tokens, OOM mid-prefill) must not be replayed
                raise
            t3 = time.perf_counter()
            del timings["start"]
            embeds = visual.detach().float().cpu().numpy() if tensors else None
        text, spans = token_spans(self.tokenizer, out.ids)
        think, answer_text, objects = parse_output(text)
        assign_confidences(objects, spans, out.token_probs)
        t4 = time.perf_counter()
        # Seconds per stage; the model's own finer stages (siglip_s, sonata_s, pooling_s,
        # prefill_s, decode_s) are added where it reports them.
        timings.update(generate_s=t3 - t2)
        stages.update(out.timings or {})
        timings.update({k: float(v) for k, v in stages.items() if k.endswith("_s") and k not in timings})
        timings["prefix_cache_hit"] = float(bool((out.timings or {}).get("prefix_cache_hit", False)))
        timings.update(parse_s=t4 - t3, total_s=t4 - t0)
        answer = Answer(answer=answer_text, text=text, objects=objects, think=think,
                        keyframes_used=len(frames), timings=timings, untrained=self.untrained,
                        stopped=bool(stream and stream.stopped))
        return InferenceResult(
            answer=answer,
            prompt_ids=np.asarray(ids, dtype=np.int64),
            visual_embeds=embeds if tensors else np.zeros((0, 0), np.float32),
            last_logits=torch.as_tensor(out.last_prompt_logits).detach().float().cpu().numpy().reshape(-1),
            generated_ids=np.asarray(out.ids, dtype=np.int64),
            token_probs=np.asarray(out.token_probs, dtype=np.float64),
            frame_indices=np.asarray(frames, dtype=np.int64),
        )


__all__ = ["Reasoner", "InferenceResult", "resolve_checkpoint", "check_query", "DEFAULT_MAX_NEW_TOKENS", "MAX_NEW_TOKENS_CAP", "MAX_QUESTION_CHARS",
           "tiny_checkpoint_dir", "TEXT_TOKENS_ALLOWANCE"]
