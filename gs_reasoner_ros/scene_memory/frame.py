"""One synced RGB-D frame with its camera pose: what the node hands to scene memory.

Conventions (those of geometry.py): K and pose float64, the pose camera-to-world with OpenCV
optical axes (x right, y down, z forward); rgb uint8 (H,W,3), possibly at another resolution than
depth but with its aspect ratio; depth float32 metres, 0 or NaN where nothing was measured.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import check_intrinsics, check_transform


@dataclass
class Frame:
    """One synced RGB-D frame with its camera pose in the world frame."""
    rgb: np.ndarray  # (Hc,Wc,3) uint8
    depth: np.ndarray  # (H,W) float32 metres, 0/NaN = no measurement
    K: np.ndarray  # (3,3) intrinsics of the depth image
    pose: np.ndarray  # (4,4) camera-to-world, optical axes
    stamp: float  # seconds
    camera: str = ""  # which camera took it (the node's `cameras` prefix; "" = the only one)

    def __post_init__(self):
        rgb, depth = np.asarray(self.rgb), np.asarray(self.depth)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
            raise ValueError(f"rgb must be uint8 (H,W,3), got {rgb.dtype} {rgb.shape}")
        if depth.ndim != 2 or depth.size == 0:
            raise ValueError(f"depth must be (H,W), got shape {depth.shape}")
        if not np.issubdtype(depth.dtype, np.floating):
            raise ValueError(f"depth must be float metres, got {depth.dtype} (convert 16UC1 millimetres first)")
        hc, wc = rgb.shape[:2]
        h, w = depth.shape
        if abs(hc * w - wc * h) > max(h, w):
            raise ValueError(f"colour {wc}x{hc} and depth {w}x{h} must have the same aspect ratio")
        self.rgb = rgb
        self.depth = depth.astype(np.float32, copy=False)
        self.K = check_intrinsics(self.K)
        self.pose = check_transform(self.pose, "pose")
        stamp = float(self.stamp)
        if not np.isfinite(stamp):
            raise ValueError(f"stamp must be finite, got {self.stamp}")
        self.stamp = stamp
