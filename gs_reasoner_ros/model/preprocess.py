"""Frame preprocessing exactly as the authors do it (gs_reasoner_model.md §2.1, §2.2, §11).

Per frame: a world-coordinate map at DEPTH resolution (integer pixel coordinates, z-depth, invalid
depth 0 left in place so it unprojects to the camera centre, as in training), nearest-resized to the
size the RGB is resized to, and both centre-cropped to a square. The RGB is resized with Pillow's
bicubic filter on uint8 and normalised to [-1, 1] like SigLIP's image processor.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from gs_reasoner_ros.scene import Scene

CROP_SIZE = 384


def resized_size(height: int, width: int, crop: int = CROP_SIZE) -> tuple[int, int]:
    """(new_height, new_width) with the shorter side scaled to `crop`; the authors' arithmetic,
    including int() truncation of the longer side (never below `crop`, so the crop always fits)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if height <= width:
        return crop, max(crop, int(width * (crop / height)))
    return max(crop, int(height * (crop / width))), crop


def crop_box(new_height: int, new_width: int, crop: int = CROP_SIZE) -> tuple[int, int]:
    """(top, left) of the centre crop."""
    return (new_height - crop) // 2, (new_width - crop) // 2


def resize_crop_rgb(rgb: np.ndarray, new_size: tuple[int, int], crop: int = CROP_SIZE) -> np.ndarray:
    """uint8 (H,W,3) -> uint8 (crop,crop,3): Pillow bicubic resize (its default filter, antialiased)
    to new_size=(h, w), then the centre crop."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (H,W,3), got {rgb.dtype} {rgb.shape}")
    h, w = new_size
    image = Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.Resampling.BICUBIC)
    top, left = crop_box(h, w, crop)
    return np.asarray(image.crop((left, top, left + crop, top + crop)))


def normalize_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H,W,3) -> float32 (3,H,W) in [-1,1]: rescale by 1/255 in float64 then cast to float32,
    then (x-0.5)/0.5 in float32, the order of SigLIP's image processor."""
    x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.float32(0.5)
    x = (x - mean) / mean
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def world_coordinate_map(depth: np.ndarray, intrinsics: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """float32 (H,W,3) world point of every depth pixel, in float32 like the authors.

    depth: (H,W) metres, 0 = no measurement (kept: it unprojects to the camera centre); NaN is
    treated as 0. intrinsics: (3,3) of the depth image. pose: (4,4) camera-to-model-frame
    (axis_align @ camera-to-world). Pixel (row v, column u) uses integer u, v (no +0.5).
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H,W), got {depth.shape}")
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape not in ((3, 3), (4, 4)) or k[0, 0] == 0 or k[1, 1] == 0:
        raise ValueError(f"intrinsics must be a (3,3) or (4,4) camera matrix with fx, fy != 0, got {k.shape}")
    if np.shape(pose) != (4, 4):
        raise ValueError(f"pose must be (4,4), got {np.shape(pose)}")
    h, w = depth.shape
    z = torch.from_numpy(np.nan_to_num(depth.astype(np.float32), nan=0.0)).reshape(-1)
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    u, v = u.reshape(-1).float(), v.reshape(-1).float()
    fx, fy, cx, cy = (torch.tensor(k[i, j], dtype=torch.float32) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    x = (u - cx) * z / fx
    y = (v - cy) * z / fy
    cam = torch.stack([x, y, z, torch.ones_like(z)], dim=0)  # (4, H*W)
    world = torch.from_numpy(np.asarray(pose, dtype=np.float32)) @ cam
    world = (world[:3] / world[3:]).T
    return world.reshape(h, w, 3).contiguous().numpy()


def resize_crop_points(points: np.ndarray, new_size: tuple[int, int], crop: int = CROP_SIZE) -> np.ndarray:
    """float32 (H,W,3) -> (crop,crop,3): cv2 INTER_NEAREST resize to new_size=(h, w), centre crop."""
    h, w = new_size
    resized = cv2.resize(points, (w, h), interpolation=cv2.INTER_NEAREST)
    top, left = crop_box(h, w, crop)
    return resized[top:top + crop, left:left + crop]


def preprocess_frames(scene: Scene, frame_indices: Sequence[int], crop: int = CROP_SIZE
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for the chosen frames: pixel values float32 (F,3,crop,crop) in [-1,1] and world
    coordinates float32 (F,crop,crop,3) in the scene's axis-aligned (model) frame, pixel-aligned."""
    if not isinstance(scene, Scene):
        raise ValueError(f"expected a gs_reasoner_ros.scene.Scene, got {type(scene).__name__}")
    indices = [int(i) for i in np.asarray(frame_indices).reshape(-1)]
    if not indices:
        raise ValueError("frame_indices is empty")
    bad = [i for i in indices if not -len(scene) <= i < len(scene)]
    if bad:
        raise ValueError(f"frame indices {bad} are out of range for a scene of {len(scene)} frames")
    align = torch.from_numpy(scene.axis_align).float()
    pixels, coords = [], []
    for i in indices:
        # The authors compose the alignment with the pose in float32.
        pose = (align @ torch.from_numpy(scene.poses[i]).float()).numpy()
        depth = scene.depth[i]
        # Both maps get the size computed from the DEPTH resolution, as in the authors' code.
        new_size = resized_size(*depth.shape, crop)
        pixels.append(normalize_rgb(resize_crop_rgb(scene.rgb[i], new_size, crop)))
        points = world_coordinate_map(depth, scene.intrinsics[i], pose)
        coords.append(resize_crop_points(points, new_size, crop))
    return np.stack(pixels), np.stack(coords)
