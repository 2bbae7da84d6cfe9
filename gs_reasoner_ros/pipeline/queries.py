"""What the node's ~/ask and ~/ground do, without ROS: validate a request once (against the
limits it carries), align the remembered scene, ask the model, and put its boxes back into the
world frame.

The node only converts requests and results to and from messages. Nothing here raises for a
bad request: every outcome is a QueryOutcome with success and a message saying why.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from gs_reasoner_ros import geometry
from gs_reasoner_ros.questions import MAX_OPTIONS, clean_text

log = logging.getLogger(__name__)

UNTRAINED_NOTE = ("WARNING: the model weights are untrained (no checkpoint was given), so answers and "
                  "boxes are meaningless; set the checkpoint parameter to a GS-Reasoner folder")
MIN_ALIGNMENT_POINTS = 500  # fewer map points than this say nothing about walls
GRAVITY_WARN_DEG = 35.0  # cameras pitch and roll; beyond this the world's z is not up


@dataclass
class WorldObject:
    """A grounded object as an oriented box in the world frame."""

    label: str
    center: np.ndarray  # (3,)
    quat: np.ndarray  # (4,) xyzw
    size: np.ndarray  # (3,) full extents along the box axes
    confidence: float


@dataclass
class QueryOutcome:
    success: bool
    message: str = ""
    answer: str = ""
    reasoning: str = ""
    objects: list[WorldObject] = field(default_factory=list)
    stamp: float | None = None  # newest keyframe used
    keyframes_used: int = 0
    latency_s: float = 0.0
    cancelled: bool = False  # stopped by the caller before the model finished


@dataclass
class QueryProgress:
    """A streamed answer after one more token; boxes already in the world frame."""

    text: str  # everything generated so far
    tokens: int
    objects: list[WorldObject]  # every box closed so far
    new_objects: list[WorldObject]  # the boxes this token closed
    elapsed_s: float  # since the model was asked


@dataclass
class QueryLimits:
    """The request limits (parameters of the same names)."""

    max_question_chars: int = 2000
    default_max_new_tokens: int = 0  # 0: the model's per-task default
    max_new_tokens_limit: int = 2048
    num_frames: int = 32
    align_to_walls: bool = True
    trust_world_frame: bool = False  # take world_frame's z as gravity; else level the map to its floor


def token_budget(requested: int, limits: QueryLimits) -> tuple[int | None, str]:
    """(budget, note): 0 asks for the default (None: the model's per-task one); more than
    the limit is clamped, with a note."""
    if requested <= 0:
        return min(limits.default_max_new_tokens, limits.max_new_tokens_limit) or None, ""
    if requested > limits.max_new_tokens_limit:
        return limits.max_new_tokens_limit, (f"max_new_tokens {requested} clamped to "
                                             f"{limits.max_new_tokens_limit} (max_new_tokens_limit)")
    return int(requested), ""


@dataclass
class QueryRequest:
    """A validated request, ready for the model, with the limits it was validated against."""

    text: str
    options: list[str]
    task: str  # "spatial" (grounded chain of thought), "qa" (direct) or "ground"
    max_new_tokens: int = 0
    limits: QueryLimits = field(default_factory=QueryLimits)


class QueryEngine:
    """Answers ~/ask and ~/ground over a keyframe store and a voxel map with a reasoner.
    prepare_* validate (cheap, any thread) against the limits given, else `default_limits`;
    run() calls the model (the worker thread) within the limits the request carries."""

    def __init__(self, reasoner, keyframes, voxel_map, default_limits: QueryLimits | None = None):
        self.reasoner, self.keyframes, self.voxel_map = reasoner, keyframes, voxel_map
        self.default_limits = default_limits or QueryLimits()
        self._alignment: tuple[tuple, np.ndarray] | None = None  # ((keyframes.version, trust), A)
        self.alignment_info = None  # geometry.AlignmentInfo of the alignment in use

    def prepare_ask(self, question: str, options=(), direct: bool = False, max_new_tokens: int = 0,
                    limits: QueryLimits | None = None) -> QueryRequest | QueryOutcome:
        limits = limits or self.default_limits
        try:
            q = clean_text(question, limits.max_question_chars, "question")
            if len(options) > MAX_OPTIONS:
                raise ValueError(f"{len(options)} options; at most {MAX_OPTIONS} are accepted")
            opts = [clean_text(o, limits.max_question_chars, f"option {i + 1}") for i, o in enumerate(options)]
            total = len(q) + sum(map(len, opts))
            if total > limits.max_question_chars:
                raise ValueError(f"question and options have {total} characters; the limit is "
                                 f"{limits.max_question_chars} (max_question_chars)")
        except ValueError as err:
            return QueryOutcome(False, str(err))
        return QueryRequest(q, opts, "qa" if direct else "spatial", int(max_new_tokens), limits)

    def prepare_ground(self, description: str, max_new_tokens: int = 0,
                       limits: QueryLimits | None = None) -> QueryRequest | QueryOutcome:
        limits = limits or self.default_limits
        try:
            d = clean_text(description, limits.max_question_chars, "description")
        except ValueError as err:
            return QueryOutcome(False, str(err))
        return QueryRequest(d, [], "ground", int(max_new_tokens), limits)

    def ask(self, question: str, options=(), direct: bool = False, max_new_tokens: int = 0) -> QueryOutcome:
        req = self.prepare_ask(question, options, direct, max_new_tokens)
        return req if isinstance(req, QueryOutcome) else self.run(req)

    def ground(self, description: str, max_new_tokens: int = 0) -> QueryOutcome:
        req = self.prepare_ground(description, max_new_tokens)
        return req if isinstance(req, QueryOutcome) else self.run(req)

    def alignment(self, limits: QueryLimits | None = None) -> np.ndarray:
        """World -> model frame for the current map (identity when disabled or too few points).

        Estimated again only when the keyframes changed: the map keeps growing while the camera
        streams, and an alignment that moved by a hair would make the model encode the same
        keyframes again, where a follow-up question reuses their visual tokens and prompt."""
        limits = limits or self.default_limits
        if not limits.align_to_walls:
            return np.eye(4)
        key = (self.keyframes.version, limits.trust_world_frame)
        if self._alignment is not None and self._alignment[0] == key:
            return self._alignment[1]
        points = self.voxel_map.points()
        if len(points) < MIN_ALIGNMENT_POINTS:
            return np.eye(4)  # not kept: the next question may have enough points
        poses = [f.pose for f in self.keyframes.frames()]
        A, info = geometry.estimate_alignment(points, level=not limits.trust_world_frame, return_info=True,
                                              poses=np.stack(poses) if poses else None)
        self._alignment, self.alignment_info = (key, A), info
        return A

    def alignment_note(self) -> str:
        """What the answer's frame is, when the model did not get world_frame's z as is: the map
        levelled to its floor, or world_frame's z kept because no floor was clear."""
        info = self.alignment_info
        if info is None or (info.floor_found and not info.leveled):
            return ""
        if info.leveled:
            return f"frame: world_frame levelled by {info.up_correction_deg:.1f} deg to the fitted floor"
        return f"frame: world_frame's z kept ({info.level_reason})"

    def run(self, req: QueryRequest, on_progress: Callable[[QueryProgress], bool] | None = None) -> QueryOutcome:
        """Align the scene, ask the model, put its boxes into the world frame.

        on_progress streams the answer (every token, boxes rotated back to the world frame as
        each closes); a truthy return stops the model at the next token: the outcome is then a
        failure with cancelled=True, carrying the text and boxes written so far."""
        t0 = time.monotonic()
        limits = req.limits
        budget, note = token_budget(req.max_new_tokens, limits)
        notes = [note] if note else []
        if getattr(self.reasoner, "untrained", False):
            notes.append(UNTRAINED_NOTE)
        if getattr(self.reasoner, "model_note", ""):
            notes.append(str(self.reasoner.model_note))  # the demo model says what it is in every answer
        if len(self.keyframes) == 0:
            return QueryOutcome(False, "; ".join(["no keyframes yet: the node has not received any posed "
                                                  "RGB-D frame (check the camera topics and TF)"] + notes))
        try:
            A = self.alignment(limits)
            scene = self.keyframes.to_scene(limits.num_frames, A)
            notes += _gravity_notes(scene.poses) + [n for n in (self.alignment_note(),) if n]
            stream = {} if on_progress is None else {"on_progress": _WorldStream(on_progress, A, t0)}
            result = self.reasoner.answer(scene, req.text, options=tuple(req.options), task=req.task,
                                          max_new_tokens=budget, **stream)
            objects = stream["on_progress"].world if stream else [self._to_world(b, A) for b in result.objects]
        except Exception as err:  # noqa: BLE001 (any model failure becomes a failed response)
            log.exception("query failed")
            _release_accelerator_memory(err)
            return QueryOutcome(False, "; ".join([f"model failed: {type(err).__name__}: {err}"] + notes),
                                latency_s=time.monotonic() - t0)
        if getattr(result, "untrained", False) and UNTRAINED_NOTE not in notes:
            notes.append(UNTRAINED_NOTE)
        stamps = getattr(scene, "stamps", None)
        stamp = float(np.max(stamps)) if stamps is not None and len(stamps) else self.keyframes.newest_stamp
        if getattr(result, "stopped", False):
            n = stream["on_progress"].tokens if stream else 0
            return QueryOutcome(False, "; ".join([f"cancelled after {n} tokens"] + notes), result.answer, result.text,
                                objects, stamp, int(result.keyframes_used or len(scene)), time.monotonic() - t0,
                                cancelled=True)
        return QueryOutcome(True, "; ".join(notes), result.answer, result.text, objects, stamp,
                            int(result.keyframes_used or len(scene)), time.monotonic() - t0)

    @staticmethod
    def _to_world(box, A: np.ndarray) -> WorldObject:
        return _to_world(box, A)


def _to_world(box, A: np.ndarray) -> WorldObject:
    """A model-frame GroundedBox as an oriented box in the world frame (A: world -> model)."""
    center, quat, size = geometry.aligned_box_to_world(box.box_min, box.box_max, A)
    return WorldObject(str(box.label), center, quat, size, float(box.confidence))


class _WorldStream:
    """The reasoner's on_progress for QueryEngine.run: rotates each box back to the world frame
    once, when it closes, and hands the caller a QueryProgress."""

    def __init__(self, on_progress: Callable[[QueryProgress], bool], A: np.ndarray, t0: float):
        self.on_progress, self.A, self.t0 = on_progress, A, t0
        self.world: list[WorldObject] = []
        self.tokens = 0

    def __call__(self, progress) -> bool:
        new = [_to_world(b, self.A) for b in progress.new_objects]
        self.world.extend(new)
        self.tokens = progress.tokens
        return bool(self.on_progress(QueryProgress(progress.text, progress.tokens, list(self.world), new,
                                                   time.monotonic() - self.t0)))


def _gravity_notes(poses: np.ndarray) -> list[str]:
    """A warning when the cameras say world_frame is not z-up (the model assumes it is)."""
    up, _ = geometry.camera_up(poses)
    tilt = float(np.degrees(np.arccos(np.clip(up[2], -1.0, 1.0))))
    if tilt <= GRAVITY_WARN_DEG:
        return []
    return [f"WARNING: world_frame does not look z-up (the cameras' up is {tilt:.0f} deg from +z); "
            "the model expects a gravity-aligned, z-up world frame"]


def _release_accelerator_memory(err: Exception) -> None:
    """After CUDA out-of-memory, hand cached blocks back so the next query can run."""
    torch = sys.modules.get("torch")  # only a model that imported torch can have filled its cache
    if torch is None or "out of memory" not in str(err).lower():
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 (best effort)
        pass
