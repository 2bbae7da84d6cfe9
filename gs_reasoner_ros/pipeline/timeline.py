"""Timelines: noticing that the stamps of an input or a TF edge went back (a bag looped, a
simulator reset), so the pipeline can start a new timeline instead of mixing two.

Each input (colour, depth, camera_info) and each dynamic TF edge is tracked on its own: a
localiser legitimately publishes older stamps than odometry does, so stamps are compared only
with earlier stamps of the same source. One message must not be able to wipe the map, so a
jump is only believed when AGREE_INPUTS different sources went back to the same time (a looping
bag or a reset simulator moves all of them): the camera inputs, and the TF edges on the camera's
own chain (unrelated TF edges never count: a peer can publish any frame), and stamps that cannot be real (0, or far ahead of the
clock) are refused before they are compared at all. Several sources see one jump; `claim`
tells the first sighting from the echoes.
"""
from __future__ import annotations

import threading
import time

MAX_TRACKED_TF_EDGES = 4096  # newest-stamp bookkeeping; beyond it the table restarts (hostile TF)
SAME_JUMP_WINDOW_S = 1.0  # sightings of one jump on other sources arrive within this (wall time)
AGREE_INPUTS = 2  # sources that must see the same jump before a new timeline starts
MAX_FUTURE_S = 10.0  # stamps further ahead of the clock than this are refused


def plausible(stamp: float, now: float) -> str:
    """Why `stamp` cannot be a real message time ("" when it can): zero or negative, not finite,
    or more than MAX_FUTURE_S ahead of `now` (now <= 0: the clock is not known yet)."""
    if not stamp > 0.0 or stamp != stamp or stamp == float("inf"):
        return f"stamp {stamp!r} is not a time"
    if now > 0.0 and stamp > now + MAX_FUTURE_S:
        return f"stamp {stamp:.3f} is {stamp - now:.0f} s ahead of the clock"
    return ""


class Timeline:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._newest: dict[tuple[str, str], float] = {}  # (kind, name) -> newest stamp
        self._edges = 0
        self._last_reset: tuple[float, float] | None = None  # (stamp, wall time) of the latest jump
        self._sightings: dict[str, tuple[float, float]] = {}  # input -> (jumped-back stamp, wall time)

    def observe(self, kind: str, name: str, stamp: float, threshold_s: float) -> float | None:
        """Record `stamp` of source (kind, name) ("input" or "tf"); returns how far it went back
        when that is more than threshold_s (a jump), else None."""
        key = (kind, name)
        with self._lock:
            if kind == "tf" and key not in self._newest:
                if self._edges >= MAX_TRACKED_TF_EDGES:
                    self._newest = {k: v for k, v in self._newest.items() if k[0] != "tf"}
                    self._edges = 0
                self._edges += 1
            newest = self._newest.get(key)
            jumped = newest is not None and stamp < newest - threshold_s
            self._newest[key] = stamp if newest is None or jumped else max(stamp, newest)
        return newest - stamp if jumped else None

    def agreed(self, name: str, stamp: float, threshold_s: float) -> bool:
        """Record that source `name` jumped back to `stamp`; True once AGREE_INPUTS sources saw a
        jump back to the same time (within threshold_s) within SAME_JUMP_WINDOW_S."""
        now = self._clock()
        with self._lock:
            self._sightings[name] = (stamp, now)
            alike = [n for n, (s, t) in self._sightings.items()
                     if now - t < SAME_JUMP_WINDOW_S and abs(s - stamp) <= threshold_s]
            if len(alike) < AGREE_INPUTS:
                return False
            self._sightings.clear()
            return True

    def restart(self, kind: str, name: str, stamp: float) -> None:
        """After a new timeline: the source that jumped continues from `stamp`."""
        with self._lock:
            self._newest[(kind, name)] = stamp

    def forget(self) -> None:
        with self._lock:
            self._newest, self._edges = {}, 0
            self._sightings.clear()

    def claim(self, stamp: float, threshold_s: float) -> bool:
        """True for the first sighting of a jump back to `stamp`, False for the same jump seen
        again on another source shortly after."""
        now = self._clock()
        with self._lock:
            last = self._last_reset
            if last is not None and abs(stamp - last[0]) <= threshold_s and now - last[1] < SAME_JUMP_WINDOW_S:
                return False
            self._last_reset = (stamp, now)
            return True
