"""What a decoded frame must be before it may enter the map and the keyframe store.

One bad frame must never poison later questions, and no peer may make a keyframe cost more
memory than the model and the map can use. So, before a frame is posed and fused:
- its intrinsics describe this image: focal lengths within [MIN_FOCAL, MAX_FOCAL] times the
  image's larger side (a focal length near zero sends every pixel to infinity), the principal
  point inside the image;
- depth beyond max_depth_m (or not finite) is "no measurement" (0), so 25 km or 1e30 never
  becomes a world point;
- images larger than KEYFRAME_MAX_PIXELS are reduced by a whole factor (depth by picking pixels:
  averaging across an edge would invent surfaces; colour by area) with K scaled to match;
- the camera pose is finite and rigid, within MAX_WORLD_M of the origin.
Each check raises ValueError naming the problem; the caller counts and reports it.
"""
from __future__ import annotations

import math

import numpy as np

from gs_reasoner_ros import geometry

MIN_FOCAL, MAX_FOCAL = 0.05, 50.0  # times the image's larger side: fisheye ~0.3, long lens ~10
KEYFRAME_MAX_PIXELS = 640 * 480  # the model resizes to 384 px, the map strides: more is never used
MAX_WORLD_M = 10_000.0  # voxel keys reach +-21 km at 2 cm; a camera beyond 10 km is a broken pose


def check_intrinsics(k: np.ndarray, width: int, height: int) -> None:
    """ValueError unless K is a plausible pinhole camera for a width x height image."""
    side = max(width, height)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    for name, f in (("fx", fx), ("fy", fy)):
        if not MIN_FOCAL * side <= f <= MAX_FOCAL * side:
            raise ValueError(f"camera_info {name}={f:.4g} is implausible for a {width}x{height} image "
                             f"(accepted {MIN_FOCAL * side:.4g}..{MAX_FOCAL * side:.4g})")
    if not (0.0 <= cx <= width and 0.0 <= cy <= height):
        raise ValueError(f"camera_info principal point ({cx:.4g}, {cy:.4g}) lies outside the {width}x{height} image")


def limit_depth(depth: np.ndarray, max_depth_m: float) -> np.ndarray:
    """Depth with every value beyond max_depth_m (or not finite) set to 0 ("no measurement")."""
    bad = ~np.isfinite(depth) | (depth > max_depth_m) | (depth < 0)
    if not bad.any():
        return depth
    out = depth.copy()
    out[bad] = 0.0
    return out


def reduction_factor(width: int, height: int, max_pixels: int = KEYFRAME_MAX_PIXELS) -> int:
    """The smallest whole factor that brings width x height within max_pixels."""
    return max(1, math.ceil(math.sqrt(width * height / max_pixels)))


def reduce(rgb: np.ndarray, depth: np.ndarray, k: np.ndarray, factor: int):
    """(rgb, depth, K) at 1/factor of the resolution. Depth keeps every factor-th pixel (the one
    at each block's centre), colour is averaged over the block; K follows the pixel centres."""
    if factor == 1:
        return rgb, depth, k
    h, w = (depth.shape[0] // factor) * factor, (depth.shape[1] // factor) * factor
    off = factor // 2
    small_depth = np.ascontiguousarray(depth[off:h:factor, off:w:factor])
    blocks = rgb[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
    small_rgb = blocks.mean(axis=(1, 3)).round().astype(np.uint8)
    k2 = k.copy()
    k2[0, 0] /= factor
    k2[1, 1] /= factor
    k2[0, 2] = (k[0, 2] - off) / factor  # pixel (off + factor*i) becomes pixel i
    k2[1, 2] = (k[1, 2] - off) / factor
    return small_rgb, small_depth, k2


def check_pose(pose: np.ndarray) -> None:
    """ValueError unless the camera pose is a finite rigid transform within MAX_WORLD_M."""
    if not np.all(np.isfinite(pose)) or not geometry.is_rigid(pose, tol=1e-3):
        raise ValueError("camera pose is not a finite rigid transform")
    distance = float(np.linalg.norm(pose[:3, 3]))
    if distance > MAX_WORLD_M:
        raise ValueError(f"camera pose is {distance:.4g} m from the world origin (more than {MAX_WORLD_M:g} m)")
