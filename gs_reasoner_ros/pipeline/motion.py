"""The camera's recent motion: relocalisation detection and constant-twist pose prediction.

Poses are 4x4 camera-to-world transforms (world_frame <- optical frame), stamps in seconds.
A pose that moves further between two consecutive frames than a camera can is the localiser
correcting world_frame, not motion; the prediction from the frames before it says where the
camera would be in the old world frame, so the memory can be moved by the correction.
"""
from __future__ import annotations

import collections

import numpy as np

RELOCALIZATION_WINDOW_S = 1.0  # consecutive frames further apart may legitimately have moved far
MAX_EXTRAPOLATION = 4.0  # predict at most this many frame intervals ahead
NORMAL_STEPS = 30  # recent frame-to-frame motions that say what "normal" is
NORMAL_FACTOR = 5.0  # a jump must exceed this many times the typical step, whatever the parameters say


def angle_deg(T: np.ndarray) -> float:
    """Rotation angle of a rigid transform, degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(T[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))


def scaled_motion(T: np.ndarray, k: float) -> np.ndarray:
    """The rigid motion T taken k times (rotation angle and translation scaled by k); identity
    for rotations near 180 degrees, where the axis is ill-defined (no frame turns that far)."""
    out = np.eye(4)
    theta = np.radians(angle_deg(T))
    if theta > 2.5:
        return out
    if theta > 1e-9:
        R = T[:3, :3]
        axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2.0 * np.sin(theta))
        x = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        a = k * theta
        out[:3, :3] = np.eye(3) + np.sin(a) * x + (1 - np.cos(a)) * (x @ x)
    out[:3, 3] = k * T[:3, 3]
    return out


class MotionHistory:
    """The (stamp, pose) of the last two integrated frames."""

    def __init__(self):
        self._poses: collections.deque = collections.deque(maxlen=2)
        self._steps: collections.deque = collections.deque(maxlen=NORMAL_STEPS)  # (metres, degrees)

    def clear(self) -> None:
        self._poses.clear()
        self._steps.clear()

    def add(self, stamp: float, pose: np.ndarray) -> None:
        if self._poses and 0.0 <= stamp - self._poses[-1][0] <= RELOCALIZATION_WINDOW_S:
            last = self._poses[-1][1]
            self._steps.append((float(np.linalg.norm(pose[:3, 3] - last[:3, 3])), angle_deg(np.linalg.inv(last) @ pose)))
        self._poses.append((stamp, pose))

    def normal_step(self) -> tuple[float, float]:
        """The typical (median) recent step, metres and degrees; (0, 0) before there are five."""
        if len(self._steps) < 5:
            return 0.0, 0.0
        steps = np.asarray(self._steps)
        return float(np.median(steps[:, 0])), float(np.median(steps[:, 1]))

    def jump(self, stamp: float, pose: np.ndarray, max_move_m: float, max_turn_deg: float) -> str | None:
        """Why `pose` at `stamp` is a relocalisation (it moved more than max_move_m or turned
        more than max_turn_deg since the last frame, less than RELOCALIZATION_WINDOW_S before;
        a limit of 0 is off), or None. Each limit is raised to NORMAL_FACTOR times the typical
        recent step, so a limit set below what normal motion does cannot fire on every frame."""
        if not self._poses or not 0.0 <= stamp - self._poses[-1][0] <= RELOCALIZATION_WINDOW_S:
            return None
        last_stamp, last = self._poses[-1]
        moved = float(np.linalg.norm(pose[:3, 3] - last[:3, 3]))
        turned = angle_deg(np.linalg.inv(last) @ pose)
        step_m, step_deg = self.normal_step()
        max_move_m = max(max_move_m, NORMAL_FACTOR * step_m) if max_move_m > 0 else 0.0
        max_turn_deg = max(max_turn_deg, NORMAL_FACTOR * step_deg) if max_turn_deg > 0 else 0.0
        if not ((0 < max_move_m < moved) or (0 < max_turn_deg < turned)):
            return None
        return f"camera pose jumped {moved:.2f} m / {turned:.0f} deg in {stamp - last_stamp:.2f} s"

    def predicted(self, stamp: float) -> np.ndarray:
        """Where the camera would be at `stamp` in the old world frame: the last pose moved on at
        the last frames' velocity (constant twist), or the last pose when there is no history."""
        (s0, a), (s1, b) = self._poses[0], self._poses[-1]
        if len(self._poses) < 2 or not 0 < s1 - s0 <= RELOCALIZATION_WINDOW_S:
            return b
        k = min((stamp - s1) / (s1 - s0), MAX_EXTRAPOLATION)
        return b @ scaled_motion(np.linalg.inv(a) @ b, k)  # the last step, in the camera's own frame
