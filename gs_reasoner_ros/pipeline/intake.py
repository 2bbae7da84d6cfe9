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

from gs_reasoner_ros.pipeline import budget, frame_checks
from gs_reasoner_ros.pipeline.health import Reporter
from gs_reasoner_ros.pipeline.motion import MotionHistory
from gs_reasoner_ros.pipeline.tf_tree import TfError
from gs_reasoner_ros.pipeline.timeline import Timeline, plausible

POLL_S = 0.02  # how often the intake thread retries frames waiting for their pose
TF_STASH = 512  # TF samples too old for the history, kept in case a new timeline starts
DEFAULT_QUEUE_SIZE = 4  # synced sets waiting for the thread (the intake_queue_size default)


@dataclass
class RgbdFrame:
    """One synced, decoded RGB-D observation (not yet posed)."""

    rgb: np.ndarray  # (H, W, 3) uint8, resampled to the depth size
    depth: np.ndarray  # (H, W) float32 metres
    k: np.ndarray  # 3x3 of the depth image
    stamp: float
    frame_id: str
    camera: str = ""  # the camera's topic prefix (the node's `cameras` parameter); "" = the only one


class Intake:
    """The map, the keyframes and the frames on their way into them (see the module docstring).

    `lock` guards the map, the keyframes and the frames waiting for TF; hold it to read the map
    consistently. `version` changes whenever the map does."""

    def __init__(self, params: Callable, voxel_map, keyframes, tf, reporter: Reporter,
                 decode: Callable[[object], RgbdFrame], preparer=None, drop_sync_after: Callable | None = None,
                 now: Callable[[], float] = time.time):
        self.params, self.voxel_map, self.keyframes, self.tf = params, voxel_map, keyframes, tf
        self.now = now  # the clock message stamps are compared with (<= 0: not known yet)
        self.report, self.health = reporter, reporter.health
        self._decode, self._preparer = decode, preparer
        self.drop_sync_after = drop_sync_after or (lambda cutoff: None)
        self.lock = threading.RLock()
        self.timeline = Timeline()
        self.motion: dict[str, MotionHistory] = collections.defaultdict(MotionHistory)  # per camera
        self.version = 0
        self.newest_stamp = 0.0  # of the newest frame fused
        self._pending: collections.deque = collections.deque()  # (RgbdFrame, deadline) waiting for TF
        self._tf_stash: collections.deque = collections.deque(maxlen=TF_STASH)
        self._camera_frames: collections.deque = collections.deque(maxlen=4)  # frame ids of recent frames
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
        p = self.params()
        try:
            frame = self.checked(self._decode(synced), p.max_depth_m)
        except Exception as err:  # noqa: BLE001
            self.report.reject("RGB-D frame", err)
            return
        with self.lock:
            if len(self._pending) >= p.tf_pending_frames:
                self._pending.popleft()
                self.report.tf_failure("too many frames waiting for TF; dropped the oldest")
            self._pending.append((frame, time.monotonic() + p.tf_timeout_s))
            self.drain()

    def checked(self, frame: RgbdFrame, max_depth_m: float) -> RgbdFrame:
        """The frame as the memory may keep it (gs_reasoner_ros.pipeline.frame_checks), or
        ValueError: a real stamp, plausible intrinsics, depth within max_depth_m, at most
        KEYFRAME_MAX_PIXELS."""
        why = plausible(frame.stamp, self.now())
        if why:
            raise ValueError(why)
        h, w = frame.depth.shape
        frame_checks.check_intrinsics(frame.k, w, h)
        depth = frame_checks.limit_depth(frame.depth, max_depth_m)
        factor = frame_checks.reduction_factor(w, h)
        frame.rgb, frame.depth, frame.k = frame_checks.reduce(frame.rgb, depth, frame.k, factor)
        if factor > 1:
            self.health.count("frames_reduced")
        frame.frame_id = frame.frame_id.lstrip("/")
        if frame.frame_id not in self._camera_frames:
            self._camera_frames.append(frame.frame_id)
        return frame

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
        try:
            frame_checks.check_pose(pose)
        except ValueError as err:
            self.report.reject("camera pose", err)
            return
        with self.lock:
            self._check_relocalization(f.stamp, pose, f.camera)
            self.motion[f.camera].add(f.stamp, pose)
            try:
                frame = Frame(rgb=f.rgb, depth=f.depth, K=f.k, pose=pose, stamp=f.stamp, camera=f.camera)
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
        budget.trim_heap()
        return counts

    # ---- relocalisation -----------------------------------------------------------

    def _check_relocalization(self, stamp: float, pose: np.ndarray, camera: str = "") -> None:
        """A pose jump between consecutive frames of one camera is the localiser correcting
        world_frame, not motion: clear or re-anchor the memory (relocalization_action) instead of
        fusing both. The other cameras' histories predate the correction, so they are forgotten."""
        p = self.params()
        motion = self.motion[camera]
        why = motion.jump(stamp, pose, p.relocalization_jump_m, p.relocalization_jump_deg)
        if why is None:
            return
        n = self.health.count("relocalizations")
        if p.relocalization_action == "reanchor":
            delta = pose @ np.linalg.inv(motion.predicted(stamp))  # old world -> new world
            self.voxel_map.transform(delta)
            self.keyframes.transform(delta)
        else:
            self.voxel_map.clear()
            self.keyframes.clear()
        for other in [c for c in self.motion if c != camera]:
            del self.motion[other]
        self.version += 1
        self.health.set("last_relocalization", f"{why}: {p.relocalization_action}")
        self.report.logger.warning(f"relocalisation ({n} so far): {why}; map and keyframes "
                                   f"{'re-anchored' if p.relocalization_action == 'reanchor' else 'cleared'}")

    # ---- timelines ----------------------------------------------------------------

    def observe_stamp(self, kind: str, name: str, stamp: float) -> bool:
        """Every input message's and dynamic TF sample's stamp, before it is used. False: the
        stamp cannot be real (0, far future) and the message must be dropped (counted). A stamp
        that went back by more than time_jump_reset_s starts a new timeline once the camera
        inputs agree (gs_reasoner_ros.pipeline.timeline), so that a stale message never pairs
        with the new timeline's; a TF edge alone never does."""
        why = plausible(stamp, self.now())
        if why:
            n = self.health.count("invalid_stamps")
            self.health.set("last_invalid_stamp", f"{kind} {name[:64]!r}: {why}")
            self.report.throttled("warning", f"dropped a {kind} message of {name[:64]!r}: {why} ({n} so far)",
                                  site="invalid_stamp")
            return False
        threshold = self.params().time_jump_reset_s
        if threshold <= 0:
            return True
        back = self.timeline.observe(kind, name, stamp, threshold)
        if back is None:
            return True
        if (kind == "input" or name in self._camera_chain()) and self.timeline.agreed(f"{kind}:{name}", stamp,
                                                                                       threshold):
            self.new_timeline(f"camera stamps jumped back {back:.1f} s", stamp)
        self.timeline.restart(kind, name, stamp)
        return True

    def _camera_chain(self) -> set[str]:
        """The camera frames of recent frames and the TF frames above them: the only TF edges
        whose jump back may count towards a new timeline."""
        chain = set(self._camera_frames)
        ancestors = getattr(self.tf, "ancestors", None)
        for frame in self._camera_frames if ancestors is not None else ():
            chain.update(ancestors(frame))
        return chain

    def add_transform(self, parent: str, child: str, stamp: float, translation, quat_xyzw,
                      static: bool = False) -> None:
        """A /tf or /tf_static sample into the TF tree (ValueError when it is refused). A dynamic
        sample older than its edge's history may belong to a new timeline the camera inputs have
        not announced yet (TF usually arrives first): it is kept aside and replayed if one starts."""
        if static:
            self.tf.set_transform(parent, child, stamp, translation, quat_xyzw, static=True)
            return
        if not self.observe_stamp("tf", child, stamp):
            return
        if self.tf.set_transform(parent, child, stamp, translation, quat_xyzw) is False:
            self._tf_stash.append((parent, child, stamp, translation, quat_xyzw))

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
                budget.trim_heap()
            else:
                self.keyframes.new_timeline()

    def _drop_after(self, cutoff: float) -> None:
        if self.tf is not None:
            self.tf.drop_after(cutoff)
            stash, self._tf_stash = list(self._tf_stash), collections.deque(maxlen=TF_STASH)
            for sample in stash:
                if sample[2] <= cutoff:
                    self.tf.set_transform(*sample)
        self.drop_sync_after(cutoff)
        self._pending = collections.deque(e for e in self._pending if e[0].stamp <= cutoff)
        with self._wake:
            kept = [e for e in self._inbox if e[0] <= cutoff]
            self._inbox.clear()
            self._inbox.extend(kept)
