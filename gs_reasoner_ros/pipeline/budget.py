"""The node's host memory, worst case, from its parameters: checked against memory_budget_mb at
configure, so no parameter a peer can set at run time (and apply with a lifecycle cycle) can
make the node take more.

Sizes are upper bounds per item, measured here:
- a voxel: 319 bytes resident, 497 at the peak of fusing a 200,000-point batch (numpy map,
  `make_voxel_map(0.01, 400_000)` filled with 2 M random points, tracemalloc) -> VOXEL_BYTES;
- a keyframe: at most KEYFRAME_MAX_PIXELS of RGB (3 bytes) and float32 depth (4 bytes); the
  store also keeps the last question's scene (num_frames more);
- a frame-cache entry of the model on the CPU: the 384x384 crop as float32 RGB pixels (3) and
  homogeneous camera points (4), 7 x 384 x 384 x 4 bytes (model/preprocess.py's FrameCache; a
  test checks it); on a GPU it lives in GPU memory instead.

The allocator keeps what frames, keyframes and caches free in passing: filling 716 keyframes with
no trim took 8.2 MB of RSS each for 6.3 MB of arrays, so the node trims the heap every
TRIM_PERIOD_S, in every state (a trim of a 5 GB heap took 6 ms here), as well as after every
clear and cleanup (where part of what was freed is still held for a moment). With the
trims, a keyframe still took 6.9-7.3 MB (three runs, 522-636 keyframes: the store's objects,
frames in flight, what a trim cannot return): ALLOCATOR_MARGIN covers that
(scripts/memory_attacks.py measures it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time

from gs_reasoner_ros.pipeline.frame_checks import KEYFRAME_MAX_PIXELS

MB = 1 << 20
VOXEL_BYTES = 500
KEYFRAME_BYTES = KEYFRAME_MAX_PIXELS * (3 + 4)
FRAME_CACHE_ENTRY_BYTES = (3 + 4) * 384 * 384 * 4
TRIM_PERIOD_S = 10.0
ALLOCATOR_MARGIN = 0.2  # of the arrays' bytes; 0.10-0.16 measured (above)


def frame_cache_entries(max_keyframes: int, num_frames: int) -> int:
    """Entries the model's frame cache is given (the node sizes it so): every keyframe plus one
    question's worth."""
    return max_keyframes + num_frames


def worst_case(p, model_on_cpu: bool) -> dict[str, int]:
    """Bytes per part for parameters `p` (the names of gs_reasoner_ros.ros.params)."""
    parts = {
        "max_voxels": p.max_voxels * VOXEL_BYTES,
        "max_keyframes": (p.max_keyframes + p.num_frames) * KEYFRAME_BYTES,
    }
    if model_on_cpu:
        parts["frame cache"] = frame_cache_entries(p.max_keyframes, p.num_frames) * FRAME_CACHE_ENTRY_BYTES
    parts["allocator margin"] = int(ALLOCATOR_MARGIN * sum(parts.values()))
    return parts


def refusal(p, model_on_cpu: bool) -> str:
    """Why parameters `p` do not fit memory_budget_mb ("" when they do), naming the parameter that
    takes the most and how far it would have to come down."""
    parts = worst_case(p, model_on_cpu)
    total, budget = sum(parts.values()), p.memory_budget_mb * MB
    if total <= budget:
        return ""
    part, size = max(((k, v) for k, v in parts.items() if k != "allocator margin"), key=lambda kv: kv[1])
    name = "max_keyframes" if part == "frame cache" else part  # the cache follows the keyframes
    listing = ", ".join(f"{k} {v / MB:.0f} MB" for k, v in parts.items())
    return (f"the map, keyframes and caches could take {total / MB:.0f} MB ({listing}), more than "
            f"memory_budget_mb {p.memory_budget_mb}: lower {name} (it takes {size / MB:.0f} MB) or raise "
            "memory_budget_mb at start")


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc, looked up once (find_library runs ldconfig in a subprocess), or None."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Hand freed heap pages back to the system (glibc's malloc_trim). After the map and the
    keyframes are dropped, glibc keeps the freed pages of its per-thread arenas mapped, so RSS
    stays at its high-water mark (0.98 -> 4.7 GB over 60 lifecycle rounds, back to 0.8 GB with
    one trim). False where there is no glibc."""
    libc = _libc()
    try:
        return bool(libc.malloc_trim(0)) if libc is not None else False
    except AttributeError:
        return False


class PeriodicTrim:
    """trim_heap at most once every `period_s`, for a loop that frees memory as it goes."""

    def __init__(self, period_s: float = TRIM_PERIOD_S, clock=time.monotonic):
        self.period_s, self._clock = period_s, clock
        self._last = clock()

    def __call__(self) -> bool:
        now = self._clock()
        if now - self._last < self.period_s:
            return False
        self._last = now
        return trim_heap()

