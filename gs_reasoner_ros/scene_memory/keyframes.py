"""The keyframes the model sees: a bounded, thread-safe store that keeps a frame when the
camera moved or turned enough, and hands the kept ones to the model as a Scene.

Thread-safe because the node offers frames from its intake thread and reads scenes from its
query thread: every public method takes the store's lock.
"""
from __future__ import annotations

import itertools
import threading

import numpy as np

from ..geometry import check_transform
from ..scene import Scene
from .eviction import check_eviction
from .frame import Frame

_KEYFRAME_IDS = itertools.count()  # process-wide: an id never names two different keyframes


class KeyframeStore:
    """Bounded set of keyframes: a frame is kept when its camera moved `min_translation` metres
    or turned `min_rotation_deg` since that camera's last keyframe, or `max_interval_s` passed,
    but never sooner than `min_interval_s` after it. Each camera (Frame.camera) is judged
    against its own last keyframe, so two cameras looking different ways never count as motion.
    The first frame of each camera is always kept. Beyond
    `max_keyframes` the oldest, or the one farthest from the newest camera, is dropped.

    Frames older than their camera's newest keyframe are refused (offer returns False): a clock that jumps
    back is the node's cue to clear() rather than mix timelines.

    Every kept keyframe gets an id no other keyframe of the process ever gets (its content never
    changes; transform() moves only its pose); to_scene() passes them as Scene.frame_ids so the
    model's caches key on them instead of hashing pixels."""

    def __init__(self, max_keyframes: int = 64, min_translation: float = 0.15, min_rotation_deg: float = 10.0,
                 min_interval_s: float = 0.5, max_interval_s: float = 5.0, eviction: str = "oldest"):
        if int(max_keyframes) < 1:
            raise ValueError(f"max_keyframes must be positive, got {max_keyframes}")
        for name, value in (("min_translation", min_translation), ("min_rotation_deg", min_rotation_deg),
                            ("min_interval_s", min_interval_s), ("max_interval_s", max_interval_s)):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if max_interval_s < min_interval_s:
            raise ValueError(f"max_interval_s ({max_interval_s}) must be >= min_interval_s ({min_interval_s})")
        self.max_keyframes = int(max_keyframes)
        self.min_translation = float(min_translation)
        self.min_rotation_deg = float(min_rotation_deg)
        self.min_interval_s = float(min_interval_s)
        self.max_interval_s = float(max_interval_s)
        self.eviction = check_eviction(eviction)
        self._frames: list[Frame] = []
        self._ids: list[int] = []  # parallel to _frames
        self._last: dict[str, Frame] = {}  # camera -> its newest keyframe, even if evicted by "farthest"
        self._lock = threading.Lock()
        # to_scene's reuse: every change of _frames bumps _version. _scene is (version, count,
        # axis_align bytes, Scene); _images is (chosen ids, read-only rgb, depth, K stacks), kept
        # across pose changes and new alignments, which need no new image copies.
        self._version = 0
        self._scene: tuple | None = None
        self._images: tuple | None = None

    def offer(self, frame: Frame) -> bool:
        """Keep `frame` if it is a new keyframe under the policy; returns whether it was kept."""
        if not isinstance(frame, Frame):
            raise ValueError(f"offer needs a Frame, got {type(frame).__name__}")
        with self._lock:
            if not self._wanted(frame):
                return False
            self._frames.append(frame)
            self._ids.append(next(_KEYFRAME_IDS))
            self._last[frame.camera] = frame
            if len(self._frames) > self.max_keyframes:
                victim = self._victim()
                self._frames.pop(victim)
                self._ids.pop(victim)
            self._version += 1
            return True

    def frames(self) -> list[Frame]:
        """The keyframes in time order (a copy of the list; the frames themselves are shared)."""
        with self._lock:
            return list(self._frames)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    @property
    def version(self) -> int:
        """Changes with every change of the stored keyframes (added, dropped, cleared, moved)."""
        with self._lock:
            return self._version

    def frame_id(self, frame: Frame) -> int | None:
        """The id of `frame` (this very object, as offered) while it is a stored keyframe, else None.
        E.g. to preprocess a new keyframe ahead under the key to_scene() will give it."""
        with self._lock:
            for f, frame_id in zip(self._frames, self._ids):
                if f is frame:
                    return frame_id
            return None

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._ids.clear()
            self._last = {}
            self._version += 1
            self._scene = self._images = None  # let the stacked copies go with the frames

    def new_timeline(self) -> None:
        """Stamps restart (a bag loops) but the keyframes stay valid: judge the next frame as if
        it were the first, instead of refusing it as older than the newest keyframe."""
        with self._lock:
            self._last = {}

    def transform(self, T) -> None:
        """Move every keyframe's pose by the rigid 4x4 `T` (re-anchoring after a relocalisation)."""
        import dataclasses

        T = check_transform(T, "T")
        with self._lock:
            moved = {id(f): dataclasses.replace(f, pose=T @ f.pose) for f in self._frames}
            for last in self._last.values():
                if id(last) not in moved:
                    moved[id(last)] = dataclasses.replace(last, pose=T @ last.pose)
            self._frames = [moved[id(f)] for f in self._frames]
            self._last = {camera: moved[id(last)] for camera, last in self._last.items()}
            self._version += 1  # the ids stay: the content did not change

    @property
    def newest_stamp(self) -> float | None:
        """Stamp of the newest keyframe, None when empty."""
        with self._lock:
            return max((f.stamp for f in self._last.values()), default=None)

    def to_scene(self, count: int = 32, axis_align=None) -> Scene:
        """A Scene of up to `count` keyframes chosen uniformly over the store (the authors'
        np.linspace choice), with `axis_align` (world -> model, default identity) and the
        keyframes' ids as frame_ids. Keyframes are resampled to the newest keyframe's image sizes
        (several cameras, or a reconfigured one); those of another aspect ratio are left out.

        While no keyframe was added, dropped, cleared or moved, the same count and axis_align get
        the same Scene object again; its arrays are read-only and shared, so callers must not
        assign to its fields either (make a new Scene instead)."""
        if int(count) < 1:
            raise ValueError(f"count must be positive, got {count}")
        A = np.eye(4) if axis_align is None else check_transform(axis_align, "axis_align")
        wanted = (int(count), A.tobytes())
        with self._lock:
            version, frames, ids = self._version, list(self._frames), list(self._ids)
            cached, images = self._scene, self._images
        if cached is not None and cached[:3] == (version, *wanted):
            return cached[3]
        if not frames:
            raise ValueError("no keyframes yet: the scene is empty")
        shapes = (frames[-1].rgb.shape, frames[-1].depth.shape)
        kept = [i for i, f in enumerate(frames) if _same_aspect(f, shapes)]
        idx = np.linspace(0, len(kept) - 1, min(int(count), len(kept))).astype(int)
        chosen = [kept[i] for i in idx]
        chosen_ids = tuple(ids[i] for i in chosen)
        if images is None or images[0] != chosen_ids:
            sized = [_resampled(frames[i], shapes) for i in chosen]
            images = (chosen_ids, *(_read_only(np.stack([getattr(f, name) for f in sized]))
                                    for name in ("rgb", "depth", "K")))
        poses = _read_only(np.stack([frames[i].pose for i in chosen]))
        stamps = _read_only(np.array([frames[i].stamp for i in chosen]))
        scene = Scene(images[1], images[2], images[3], poses, _read_only(A.copy()), stamps, chosen_ids)
        with self._lock:
            if self._version == version:  # else a newer keyframe set came meanwhile: keep nothing stale
                self._scene, self._images = (version, *wanted, scene), images
        return scene

    def _wanted(self, frame: Frame) -> bool:
        last = self._last.get(frame.camera)
        if last is None:
            return True
        dt = frame.stamp - last.stamp
        if dt < self.min_interval_s:  # also refuses frames from the past
            return False
        if dt >= self.max_interval_s:
            return True
        moved = np.linalg.norm(frame.pose[:3, 3] - last.pose[:3, 3])
        cos = (np.trace(last.pose[:3, :3].T @ frame.pose[:3, :3]) - 1.0) / 2.0
        turned = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        return bool(moved >= self.min_translation or turned >= self.min_rotation_deg)

    def _victim(self) -> int:
        """Index of the keyframe to drop when over the cap (never the newest)."""
        if self.eviction == "oldest":
            return 0
        here = self._frames[-1].pose[:3, 3]
        dist = [np.linalg.norm(f.pose[:3, 3] - here) for f in self._frames[:-1]]
        return int(np.argmax(dist))


def _same_aspect(frame: Frame, shapes: tuple) -> bool:
    (h, w), (hr, wr) = frame.depth.shape, shapes[1][:2]
    return abs(h * wr - w * hr) <= max(hr, wr)


def _resampled(frame: Frame, shapes: tuple) -> Frame:
    """`frame` at the image sizes `shapes` ((rgb shape, depth shape)); K follows the depth image.
    Depth is resampled by nearest neighbour so no depth between two surfaces is invented."""
    import dataclasses

    import cv2

    (rgb_shape, depth_shape) = shapes
    if (frame.rgb.shape, frame.depth.shape) == shapes:
        return frame
    (h, w), (hr, wr) = frame.depth.shape, depth_shape
    K = frame.K.copy()
    K[0] *= wr / w
    K[1] *= hr / h
    rgb = cv2.resize(frame.rgb, (rgb_shape[1], rgb_shape[0]), interpolation=cv2.INTER_AREA)
    depth = cv2.resize(frame.depth, (wr, hr), interpolation=cv2.INTER_NEAREST)
    return dataclasses.replace(frame, rgb=rgb, depth=depth, K=K)


def _read_only(array: np.ndarray) -> np.ndarray:
    """`array`, marked read-only: to_scene hands the same arrays to every caller."""
    array.setflags(write=False)
    return array
