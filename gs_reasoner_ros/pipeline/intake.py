"""Intake: synced RGB-D frames -> posed frames -> the voxel map and the keyframe store.

ROS-free. The node hands every synced colour/depth/camera_info set to `submit` (a bounded
inbox: beyond intake_queue_size the oldest is dropped and counted) together with a `decode`
function that turns it into an RgbdFrame. The intake thread decodes queued sets, waits (at
most tf_timeout_s, at most tf_pending_frames at once) for the camera pose at each frame's stamp
in the TF tree, and fuses the posed frame into the map and the keyframe store. Relocalisation
(a pose that jumps) and new timelines (stamps that go back) are handled here too, so both are
tested without DDS.

`params()` returns the live parameters (the names of gs_reasoner_ros.ros.params); they are read
at each use, so a parameter set at run time takes effect at the next frame.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gs_reasoner_ros.pipeline.health import Reporter
from gs_reasoner_ros.pipeline.motion import MotionHistory
from gs_reasoner_ros.pipeline.tf_tree import TfError
from gs_reasoner_ros.pipeline.timeline import Timeline

POLL_S = 0.02  # how often the intake thread retries frames waiting for their pose
DEFAULT_QUEUE_SIZE = 4  # synced sets waiting for the thread (the intake_queue_size default)


@dataclass
class RgbdFrame:
    """One synced, decoded RGB-D observation (not yet posed)."""

    rgb: np.ndarray  # (H, W, 3) uint8, resampled to the depth size
    depth: np.ndarray  # (H, W) float32 metres
    k: np.ndarray  # 3x3 of the depth image
    stamp: float
    frame_id: str


class Intake:
    """The map, the keyframes and the frames on their way into them (see the module docstring).

    `lock` guards the map, the keyframes and the frames waiting for TF; hold it to read the map
    consistently. `version` changes whenever the map does."""

    def __init__(self, params: Callable, voxel_map, keyframes, tf, reporter: Reporter,
                 decode: Callable[[object], RgbdFrame], preparer=None, drop_sync_after: Callable | None = None):
        self.params, self.voxel_map, self.keyframes, self.tf = params, voxel_map, keyframes, tf
        self.report, self.health = reporter, reporter.health
        self._decode, self._preparer = decode, preparer
        self.drop_sync_after = drop_sync_after or (lambda cutoff: None)
        self.lock = threading.RLock()
        self.timeline = Timeline()
        self.motion = MotionHistory()
        self.version = 0
        self.newest_stamp = 0.0  # of the newest frame fused
        self._pending: collections.deque = collections.deque()  # (RgbdFrame, deadline) waiting for TF
        self._inbox: collections.deque = collections.deque()  # (stamp, synced set) for the intake thread
        self._wake = threading.Condition()
        self._stop = True
        self._thread: threading.Thread | None = None

    # ---- the thread ---------------------------------------------------------------

    def start(self) -> None:
        with self._wake:
            self._stop = False
        self._thread = threading.Thread(target=self._loop, name="intake", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 0.5) -> None:
        """End the thread and forget queued and waiting frames (the map stays)."""
        thread = self._thread
        with self._wake:
            self._stop = True
            self._inbox.clear()
            self._wake.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._thread = None
        with self.lock:
            self._pending.clear()

    @property
    def waiting(self) -> int:
        """Synced sets queued for the intake thread."""
        return len(self._inbox)

    def submit(self, synced, stamp: float) -> None:
        """Queue a synced set (stamped `stamp`) for the intake thread; never blocks."""
        with self._wake:
            if self._stop:
                return
            if len(self._inbox) >= self.params().intake_queue_size:
                self._inbox.popleft()
                n = self.health.count("intake_dropped")
                self.report.throttled("warning", f"intake is behind: dropped the oldest synced frame ({n} so far; "
                                      "intake_queue_size)")
            self._inbox.append((stamp, synced))
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                if not self._inbox and not self._stop:
                    self._wake.wait(POLL_S)
                if self._stop:
                    return
                batch = [synced for _, synced in self._inbox]
                self._inbox.clear()
            try:
                for synced in batch:
                    self.accept(synced)
                with self.lock:
                    if self._pending:
                        self.drain()
            except Exception as err:  # noqa: BLE001 (the thread must outlive any bad frame)
                self.report.reject("intake", err)

    # ---- frames -------------------------------------------------------------------

    def accept(self, synced) -> None:
        """Decode a synced set and fuse it once its pose is known (now, or by a later drain)."""
        try:
            frame = self._decode(synced)
        except Exception as err:  # noqa: BLE001
            self.report.reject("RGB-D frame", err)
            return
        frame.frame_id = frame.frame_id.lstrip("/")
        p = self.params()
        with self.lock:
            if len(self._pending) >= p.tf_pending_frames:
                self._pending.popleft()
                self.report.tf_failure("too many frames waiting for TF; dropped the oldest")
            self._pending.append((frame, time.monotonic() + p.tf_timeout_s))
            self.drain()

    def drain(self) -> None:
        """Integrate every waiting frame whose pose is known; drop those past their deadline."""
        world = self.params().world_frame
        with self.lock:
            now, waiting = time.monotonic(), collections.deque()
            while self._pending:
                frame, deadline = self._pending.popleft()
                try:
                    pose = self.tf.lookup(world, frame.frame_id, frame.stamp)
                except TfError as err:
                    if now < deadline:
                        waiting.append((frame, deadline))
                    else:
                        self.report.tf_failure(f"no pose for {frame.frame_id} at {frame.stamp:.3f}: {err}")
                    continue
                except Exception as err:  # noqa: BLE001
                    self.report.tf_failure(f"pose lookup failed: {err}")
                    continue
                self.integrate(frame, pose)
            self._pending = waiting
        self.health.set("tf_waiting", len(waiting))

    def integrate(self, f: RgbdFrame, pose: np.ndarray) -> None:
        """Fuse a posed frame into the map and offer it to the keyframe store."""
        from gs_reasoner_ros.scene_memory import Frame

        p = self.params()
        with self.lock:
            self._check_relocalization(f.stamp, pose)
            self.motion.add(f.stamp, pose)
            try:
                frame = Frame(rgb=f.rgb, depth=f.depth, K=f.k, pose=pose, stamp=f.stamp)
                t0 = time.perf_counter()
                self.voxel_map.integrate_frame(frame, stride=p.map_stride)  # returns once fused (GPU too)
                self.health.observe("integrate_ms", (time.perf_counter() - t0) * 1e3)
                if self.keyframes.offer(frame) and self._preparer is not None:
                    self._preparer.submit(frame, self.keyframes.frame_id(frame))
            except Exception as err:  # noqa: BLE001
                self.report.reject("frame integration", err)
                return
            self.version += 1
            self.newest_stamp = max(self.newest_stamp, f.stamp)
        # From the frame's stamp to fused, as far as the wall clock tells: meaningful where the
        # camera stamps with this machine's clock (drivers do; replayed bags and sim time do not).
        self.health.observe("fused_lag_ms", (time.time() - f.stamp) * 1e3)
        self.health.count("integrated")

    def clear(self) -> tuple[int, int]:
        """Forget the map, the keyframes and every frame on its way; returns (keyframes, points)
        that were forgotten."""
        with self.lock:
            counts = len(self.keyframes), len(self.voxel_map)
            self.keyframes.clear()
            self.voxel_map.clear()
            self._pending.clear()
            with self._wake:
                self._inbox.clear()
            self.version += 1
            self.newest_stamp = 0.0
            self.motion.clear()
        return counts

    # ---- relocalisation -----------------------------------------------------------

    def _check_relocalization(self, stamp: float, pose: np.ndarray) -> None:
        """A pose jump between consecutive frames is the localiser correcting world_frame, not
        motion: clear or re-anchor the memory (relocalization_action) instead of fusing both."""
        p = self.params()
        why = self.motion.jump(stamp, pose, p.relocalization_jump_m, p.relocalization_jump_deg)
        if why is None:
            return
        n = self.health.count("relocalizations")
        if p.relocalization_action == "reanchor":
            delta = pose @ np.linalg.inv(self.motion.predicted(stamp))  # old world -> new world
            self.voxel_map.transform(delta)
            self.keyframes.transform(delta)
        else:
            self.voxel_map.clear()
            self.keyframes.clear()
        self.version += 1
        self.health.set("last_relocalization", f"{why}: {p.relocalization_action}")
        self.report.logger.warning(f"relocalisation ({n} so far): {why}; map and keyframes "
                                   f"{'re-anchored' if p.relocalization_action == 'reanchor' else 'cleared'}")

    # ---- timelines ----------------------------------------------------------------

    def observe_stamp(self, kind: str, name: str, stamp: float) -> None:
        """Every input message's and dynamic TF sample's stamp, before it is used: a stamp that
        went back by more than time_jump_reset_s starts a new timeline (a stale message must
        never pair with the new timeline's)."""
        threshold = self.params().time_jump_reset_s
        if threshold <= 0:
            return
        back = self.timeline.observe(kind, name, stamp, threshold)
        if back is None:
            return
        what = f"{name} stamps" if kind == "input" else f"TF stamps of {name!r}"
        self.new_timeline(f"{what} jumped back {back:.1f} s", stamp)
        self.timeline.restart(kind, name, stamp)

    def new_timeline(self, why: str, stamp: float) -> None:
        """Time went back to `stamp`: drop what belongs to the old timeline (anything stamped
        after stamp + time_jump_reset_s: TF samples, synchronizer queues, frames waiting for
        TF) so two timelines never mix, and the map and keyframes per time_jump_clear_map.
        New-timeline messages that other inputs delivered first are kept."""
        p = self.params()
        with self.lock:
            if not self.timeline.claim(stamp, p.time_jump_reset_s):
                return  # the same jump, seen first on another input or TF edge
            cutoff = stamp + p.time_jump_reset_s
            self.report.logger.warning(
                f"{why}: starting a new timeline (time_jump_reset_s): TF history, synchronizer queues and "
                f"frames waiting for TF after {cutoff:.3f}{', the map and keyframes' if p.time_jump_clear_map else ''}"
                " dropped")
            self.health.count("time_jump_resets")
            self.health.set("last_time_jump", why)
            self._drop_after(cutoff)
            self.timeline.forget()
            self.motion.clear()
            if p.time_jump_clear_map:
                self.voxel_map.clear()
                self.keyframes.clear()
                self.version += 1
                self.newest_stamp = 0.0
            else:
                self.keyframes.new_timeline()

    def _drop_after(self, cutoff: float) -> None:
        if self.tf is not None:
            self.tf.drop_after(cutoff)
        self.drop_sync_after(cutoff)
        self._pending = collections.deque(e for e in self._pending if e[0].stamp <= cutoff)
        with self._wake:
            kept = [e for e in self._inbox if e[0] <= cutoff]
            self._inbox.clear()
            self._inbox.extend(kept)
