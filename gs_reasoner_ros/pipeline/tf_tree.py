"""A small TF buffer: the transform tree over time, looked up at an exact stamp.

tf2_ros is not on PyPI, so this is the node's own (numpy only, no rclpy; on a real ROS 2
install gs_reasoner_ros.ros.tf puts tf2_ros's buffer behind the same interface): a child -> parent
graph, a time-sorted history per dynamic edge trimmed to a cache window, static edges valid
at every time, linear interpolation of translation and slerp of rotation between the two
samples around the stamp, and chain lookup through the lowest common ancestor. It never
answers with "the latest" transform: a stamp outside an edge's history raises
ExtrapolationError, which the node treats as "not yet" until its TF timeout runs out.
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

import numpy as np

from gs_reasoner_ros import geometry

MAX_DEPTH = 64  # a deeper chain is a loop or a broken tree


class TfError(LookupError):
    """A transform cannot be looked up."""


class ConnectivityError(TfError):
    """The two frames are not connected (yet) in the tree."""


class ExtrapolationError(TfError):
    """The stamp lies outside the history of an edge on the chain."""

    def __init__(self, message: str, future: bool):
        super().__init__(message)
        self.future = future  # True: the stamp is newer than the newest sample (TF may still come)


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list = field(default_factory=list)
    translations: list = field(default_factory=list)
    rotations: list = field(default_factory=list)  # xyzw unit quaternions


def validated_transform(translation, quat_xyzw) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    q = np.asarray(quat_xyzw, dtype=np.float64).reshape(4)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
        raise ValueError("transform has NaN or inf")
    n = np.linalg.norm(q)
    if abs(n - 1.0) > 1e-2:
        raise ValueError(f"rotation quaternion has norm {n:.4f}, not 1")
    return t, q / n


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation of xyzw unit quaternions along the short arc."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: lerp is exact enough and avoids dividing by ~0
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)


class TfBuffer:
    """Thread-safe transform tree with per-edge histories (see the module docstring)."""

    def __init__(self, cache_time_s: float = 10.0):
        if cache_time_s <= 0:
            raise ValueError(f"cache_time_s must be positive, got {cache_time_s}")
        self.cache_time_s = float(cache_time_s)
        self._edges: dict[str, _Edge] = {}
        self._lock = threading.Lock()

    def set_transform(self, parent: str, child: str, stamp: float, translation, quat_xyzw,
                      static: bool = False) -> None:
        """Add T_parent_child at `stamp` (seconds). ValueError on bad frames or values."""
        if not parent or not child or parent == child:
            raise ValueError(f"bad frame pair parent={parent!r} child={child!r}")
        t, q = validated_transform(translation, quat_xyzw)
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._edges[child] = _Edge(parent, static)  # re-parenting starts afresh
            if static:
                edge.stamps[:], edge.translations[:], edge.rotations[:] = [0.0], [t], [q]
                return
            if edge.stamps and stamp < edge.stamps[-1] - self.cache_time_s:
                return  # older than anything kept
            i = bisect.bisect_left(edge.stamps, stamp)
            if i < len(edge.stamps) and edge.stamps[i] == stamp:
                edge.translations[i], edge.rotations[i] = t, q
            else:
                edge.stamps.insert(i, stamp)
                edge.translations.insert(i, t)
                edge.rotations.insert(i, q)
            cut = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_time_s)
            if cut:
                del edge.stamps[:cut], edge.translations[:cut], edge.rotations[:cut]

    def set_transform_matrix(self, parent: str, child: str, stamp: float, matrix, static: bool = False) -> None:
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or not geometry.is_rigid(m):
            raise ValueError("transform matrix is not a finite rigid 4x4")
        self.set_transform(parent, child, stamp, m[:3, 3], geometry.quat_from_matrix(m[:3, :3]), static)

    def clear(self, static_too: bool = False) -> None:
        """Forget dynamic histories (e.g. after the clock jumped back); statics stay unless asked."""
        with self._lock:
            self._edges = {} if static_too else {c: e for c, e in self._edges.items() if e.static}

    def drop_after(self, stamp: float) -> None:
        """Forget dynamic samples stamped after `stamp` (the clock went back: they belong to
        the old timeline); statics stay."""
        with self._lock:
            for child, e in list(self._edges.items()):
                if e.static:
                    continue
                cut = bisect.bisect_right(e.stamps, stamp)
                del e.stamps[cut:], e.translations[cut:], e.rotations[cut:]
                if not e.stamps:
                    del self._edges[child]

    def frames(self) -> set[str]:
        with self._lock:
            return set(self._edges) | {e.parent for e in self._edges.values()}

    def lookup(self, target: str, source: str, stamp: float) -> np.ndarray:
        """4x4 T_target_source at `stamp`: maps points in `source` coordinates into `target`."""
        if target == source:
            return np.eye(4)
        with self._lock:
            up_s, up_t = self._chain(source), self._chain(target)
            common = next((f for f in up_s if f in set(up_t)), None)
            if common is None:
                raise ConnectivityError(f"no TF path between {target!r} and {source!r} "
                                        f"(known frames: {sorted(self._known())})")
            t_common_source = self._compose(up_s[: up_s.index(common)], stamp)
            t_common_target = self._compose(up_t[: up_t.index(common)], stamp)
        return np.linalg.inv(t_common_target) @ t_common_source

    def can_transform(self, target: str, source: str, stamp: float) -> bool:
        try:
            self.lookup(target, source, stamp)
            return True
        except TfError:
            return False

    # ---- internals (called with the lock held) ----------------------------------------

    def _known(self) -> set[str]:
        return set(self._edges) | {e.parent for e in self._edges.values()}

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
            if len(chain) > MAX_DEPTH:
                raise ConnectivityError(f"TF tree above {frame!r} is deeper than {MAX_DEPTH} (a loop?)")
        return chain

    def _compose(self, children: list[str], stamp: float) -> np.ndarray:
        """T_top_bottom for the edges from children[0] up through children[-1]'s parent."""
        m = np.eye(4)
        for child in reversed(children):
            m = m @ self._edge_at(child, stamp)
        return m

    def _edge_at(self, child: str, stamp: float) -> np.ndarray:
        e = self._edges[child]
        if e.static:
            return geometry.make_transform(e.translations[0], e.rotations[0])
        s = e.stamps
        if stamp < s[0] or stamp > s[-1]:
            future = stamp > s[-1]
            raise ExtrapolationError(
                f"extrapolation into the {'future' if future else 'past'}: {e.parent} -> {child} "
                f"at {stamp:.6f} s, history spans {s[0]:.6f} .. {s[-1]:.6f} s", future)
        i = bisect.bisect_left(s, stamp)
        if s[i] == stamp:
            return geometry.make_transform(e.translations[i], e.rotations[i])
        a = (stamp - s[i - 1]) / (s[i] - s[i - 1])
        t = (1 - a) * e.translations[i - 1] + a * e.translations[i]
        return geometry.make_transform(t, slerp(e.rotations[i - 1], e.rotations[i], a))
