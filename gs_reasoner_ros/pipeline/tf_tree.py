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
MAX_FRAMES = 1000  # a robot has tens; more is a flood
MAX_NAME = 256  # characters of a frame name
MAX_SAMPLES = 4096  # per dynamic edge: 10 s of a 400 Hz source
PRUNE_EVERY = 256  # inserts between sweeps for edges that went quiet
MAX_LISTED = 10  # frames named in an error text


def check_frame_names(parent: str, child: str) -> None:
    if not parent or not child or parent == child:
        raise ValueError(f"bad frame pair parent={parent[:64]!r} child={child[:64]!r}")
    if len(parent) > MAX_NAME or len(child) > MAX_NAME:
        raise ValueError(f"frame name longer than {MAX_NAME} characters ({parent[:32]!r}..., {child[:32]!r}...)")


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
        self._newest = -float("inf")  # newest dynamic stamp seen
        self._inserts = 0

    def set_transform(self, parent: str, child: str, stamp: float, translation, quat_xyzw,
                      static: bool = False) -> bool:
        """Add T_parent_child at `stamp` (seconds); False when the sample is older than anything
        kept for its edge (dropped). ValueError on bad frames or values, on a name longer than
        MAX_NAME, an edge that would close a loop, or a new frame beyond MAX_FRAMES."""
        check_frame_names(parent, child)
        t, q = validated_transform(translation, quat_xyzw)
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                self._check_new_edge(parent, child)
                edge = self._edges[child] = _Edge(parent, static)  # re-parenting starts afresh
            if static:
                edge.stamps[:], edge.translations[:], edge.rotations[:] = [0.0], [t], [q]
                return True
            if edge.stamps and stamp < edge.stamps[-1] - self.cache_time_s:
                return False  # older than anything kept
            i = bisect.bisect_left(edge.stamps, stamp)
            if i < len(edge.stamps) and edge.stamps[i] == stamp:
                edge.translations[i], edge.rotations[i] = t, q
            else:
                edge.stamps.insert(i, stamp)
                edge.translations.insert(i, t)
                edge.rotations.insert(i, q)
            cut = max(bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_time_s),
                      len(edge.stamps) - MAX_SAMPLES)
            if cut > 0:
                del edge.stamps[:cut], edge.translations[:cut], edge.rotations[:cut]
            self._newest = max(self._newest, stamp)
            self._inserts += 1
            if self._inserts % PRUNE_EVERY == 0:
                self._prune()
            return True

    def _check_new_edge(self, parent: str, child: str) -> None:  # with the lock held
        if child not in self._edges and len(self._edges) >= MAX_FRAMES:
            raise ValueError(f"the TF tree already holds {MAX_FRAMES} frames; {child[:64]!r} refused")
        frame, hops = parent, 0
        while frame in self._edges and hops <= MAX_DEPTH:
            frame, hops = self._edges[frame].parent, hops + 1
            if frame == child:
                raise ValueError(f"{parent[:64]!r} -> {child[:64]!r} would close a loop in the TF tree")

    def _prune(self) -> None:  # with the lock held
        """Forget dynamic edges with nothing newer than the cache window (frames that stopped
        being published, or were published once by a peer)."""
        horizon = self._newest - self.cache_time_s
        for child in [c for c, e in self._edges.items() if not e.static and e.stamps[-1] < horizon]:
            del self._edges[child]

    def set_transform_matrix(self, parent: str, child: str, stamp: float, matrix, static: bool = False) -> None:
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or not geometry.is_rigid(m):
            raise ValueError("transform matrix is not a finite rigid 4x4")
        self.set_transform(parent, child, stamp, m[:3, 3], geometry.quat_from_matrix(m[:3, :3]), static)

    def clear(self, static_too: bool = False) -> None:
        """Forget dynamic histories (e.g. after the clock jumped back); statics stay unless asked."""
        with self._lock:
            self._edges = {} if static_too else {c: e for c, e in self._edges.items() if e.static}
            self._newest = -float("inf")

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
            self._newest = min(self._newest, stamp)

    def ancestors(self, frame: str) -> list[str]:
        """The frames above `frame` up to its root ([] when unknown or looped)."""
        with self._lock:
            try:
                return self._chain(frame)[1:]
            except ConnectivityError:
                return []

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
                known = sorted(self._known())
                listed = ", ".join(repr(f[:64]) for f in known[:MAX_LISTED])
                more = f" and {len(known) - MAX_LISTED} more" if len(known) > MAX_LISTED else ""
                raise ConnectivityError(f"no TF path between {target[:64]!r} and {source[:64]!r} "
                                        f"(known frames: {listed}{more})")
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
                raise ConnectivityError(f"TF tree above {frame[:64]!r} is deeper than {MAX_DEPTH} (a loop?)")
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
                f"extrapolation into the {'future' if future else 'past'}: {e.parent[:64]} -> {child[:64]} "
                f"at {stamp:.6f} s, history spans {s[0]:.6f} .. {s[-1]:.6f} s", future)
        i = bisect.bisect_left(s, stamp)
        if s[i] == stamp:
            return geometry.make_transform(e.translations[i], e.rotations[i])
        a = (stamp - s[i - 1]) / (s[i] - s[i - 1])
        t = (1 - a) * e.translations[i - 1] + a * e.translations[i]
        return geometry.make_transform(t, slerp(e.rotations[i - 1], e.rotations[i], a))
