"""The authors' point-cloud augmentation, applied to point maps and boxes alike.

In order: per-axis scale ~U[0.75, 1.25] (anisotropic), rotation about z by a multiple of
90 degrees, then a shift ~U[-1, 1] m on each axis; each step (and each axis of the shift)
happens with probability 0.5. Jitter and elastic distortion exist in the authors' code but
are switched off, so they are not here. GCoT samples carry the transform their boxes were
written in (`metadata.data_augmentation`); `PointAugmentation.from_config` replays it.

Because the rotation is a multiple of 90 degrees, an axis-aligned box stays axis-aligned:
its centre moves with the points and its size is permuted by |R|.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALE_RANGE = (0.75, 1.25)
ROT_Z_CHOICES = (0.0, 0.5, 1.0, 1.5)  # multiples of pi, as stored in the GCoT config
SHIFT_RANGE = (-1.0, 1.0)
_AXES = ("trans_x", "trans_y", "trans_z")


@dataclass(frozen=True)
class PointAugmentation:
    """One drawn transform p' = R_z (S p) + t. None = that step is off."""

    scale: tuple[float, float, float] | None = None
    rot_z: float | None = None  # multiple of pi in ROT_Z_CHOICES
    trans: tuple[float | None, float | None, float | None] = (None, None, None)

    def __post_init__(self):
        if self.scale is not None:
            s = np.asarray(self.scale, dtype=np.float64)
            if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
                raise ValueError(f"scale must be three positive numbers, got {self.scale!r}")
        if self.rot_z is not None and not any(np.isclose(self.rot_z % 2.0, c) for c in ROT_Z_CHOICES):
            raise ValueError(f"rot_z must be a multiple of 0.5 (pi), got {self.rot_z!r}")
        if len(self.trans) != 3:
            raise ValueError(f"trans needs one entry per axis, got {self.trans!r}")

    # ---- construction ------------------------------------------------------------

    @classmethod
    def sample(cls, rng: np.random.Generator, p_scale: float = 0.5, p_rot_z: float = 0.5,
               p_trans: float = 0.5) -> "PointAugmentation":
        """Draw a transform with the authors' probabilities and ranges."""
        scale = tuple(rng.uniform(*SCALE_RANGE, size=3).tolist()) if rng.random() < p_scale else None
        rot = float(rng.choice(ROT_Z_CHOICES)) if rng.random() < p_rot_z else None
        trans = tuple(float(rng.uniform(*SHIFT_RANGE)) if rng.random() < p_trans else None for _ in range(3))
        return cls(scale, rot, trans)

    @classmethod
    def from_config(cls, config: dict) -> "PointAugmentation":
        """The fixed transform of a GCoT sample: `{"rescale": {"flag", "scale"}, "rot_z":
        {"flag", "rot"}, "trans_x"/"trans_y"/"trans_z": {"flag", "trans"}}`; missing keys = off."""
        if not isinstance(config, dict):
            raise ValueError(f"data_augmentation must be a dict, got {type(config).__name__}")

        def part(key: str, value_key: str):
            entry = config.get(key) or {}
            if not isinstance(entry, dict):
                raise ValueError(f"data_augmentation[{key!r}] must be a dict, got {entry!r}")
            if not entry.get("flag", False):
                return None
            if value_key not in entry:
                raise ValueError(f"data_augmentation[{key!r}] is flagged but has no {value_key!r}")
            return entry[value_key]

        scale = part("rescale", "scale")
        if scale is not None:
            scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (3,))
            scale = tuple(float(v) for v in scale)
        rot = part("rot_z", "rot")
        trans = tuple(None if (v := part(k, "trans")) is None else float(v) for k in _AXES)
        return cls(scale, None if rot is None else float(rot), trans)

    def to_config(self) -> dict:
        """The GCoT `data_augmentation` dict for this transform (round-trips from_config)."""
        config = {"rescale": {"flag": self.scale is not None, "scale": list(self.scale or (1.0, 1.0, 1.0))},
                  "rot_z": {"flag": self.rot_z is not None, "rot": self.rot_z or 0.0}}
        for key, t in zip(_AXES, self.trans):
            config[key] = {"flag": t is not None, "trans": t or 0.0}
        return config

    # ---- the transform -----------------------------------------------------------

    def rotation(self) -> np.ndarray:
        """R_z as an exact signed permutation (cos/sin of k*90 deg rounded to -1/0/1, so
        box sizes are permuted without 1e-17 residues)."""
        if self.rot_z is None:
            return np.eye(3)
        angle = self.rot_z * np.pi
        c, s = round(np.cos(angle)), round(np.sin(angle))
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def linear(self) -> np.ndarray:
        """R_z @ diag(scale)."""
        return self.rotation() @ np.diag(self.scale if self.scale is not None else (1.0, 1.0, 1.0))

    def translation(self) -> np.ndarray:
        return np.array([0.0 if t is None else t for t in self.trans])

    def matrix(self) -> np.ndarray:
        """The 4x4 homogeneous transform."""
        m = np.eye(4)
        m[:3, :3] = self.linear()
        m[:3, 3] = self.translation()
        return m

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """Transform (..., 3) points (a (V,H,W,3) point map works as is); same dtype back."""
        p = np.asarray(points)
        if p.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {p.shape}")
        out = p.astype(np.float64) @ self.linear().T + self.translation()
        return out.astype(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64)

    def inverse_points(self, points: np.ndarray) -> np.ndarray:
        """Undo apply_points (e.g. to bring predicted boxes' corners back)."""
        p = np.asarray(points, dtype=np.float64)
        return (p - self.translation()) @ np.linalg.inv(self.linear()).T

    def apply_boxes_center_size(self, boxes) -> np.ndarray:
        """(K, 6) [cx, cy, cz, dx, dy, dz] -> transformed, sizes permuted and scaled."""
        b = _boxes(boxes)
        centers = b[:, :3] @ self.linear().T + self.translation()
        sizes = b[:, 3:] @ np.abs(self.linear()).T
        return np.concatenate([centers, sizes], axis=1)

    def apply_boxes_minmax(self, boxes) -> np.ndarray:
        """(K, 6) [min xyz, max xyz] -> transformed [min xyz, max xyz]."""
        b = _boxes(boxes)
        corners = np.stack([b[:, :3], b[:, 3:]], axis=1) @ self.linear().T + self.translation()
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)

    def inverse_boxes_minmax(self, boxes) -> np.ndarray:
        """Undo apply_boxes_minmax."""
        b = _boxes(boxes)
        corners = self.inverse_points(np.stack([b[:, :3], b[:, 3:]], axis=1))
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


IDENTITY = PointAugmentation()


def _boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 6:
        raise ValueError(f"boxes must have shape (K, 6), got {np.shape(boxes)}")
    return b
