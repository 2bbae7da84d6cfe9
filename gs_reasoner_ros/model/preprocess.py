"""Frame preprocessing exactly as the authors do it in the released implementation.

Per frame: a world-coordinate map at DEPTH resolution (integer pixel coordinates, z-depth, invalid
depth 0 left in place so it unprojects to the camera centre, as in training), nearest-resized to the
size the RGB is resized to, and both centre-cropped to a square. The RGB is resized with Pillow's
bicubic filter on uint8 and normalised to [-1, 1] like SigLIP's image processor.
"""
from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Hashable, Sequence

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


def camera_points(depth: np.ndarray, intrinsics: np.ndarray) -> torch.Tensor:
    """float32 (4, H*W) homogeneous camera-frame points of every depth pixel (the authors'
    arithmetic: integer pixel coordinates, z-depth, NaN as 0, all in float32)."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H,W), got {depth.shape}")
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape not in ((3, 3), (4, 4)) or k[0, 0] == 0 or k[1, 1] == 0:
        raise ValueError(f"intrinsics must be a (3,3) or (4,4) camera matrix with fx, fy != 0, got {k.shape}")
    h, w = depth.shape
    z = torch.from_numpy(np.nan_to_num(depth.astype(np.float32), nan=0.0)).reshape(-1)
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    u, v = u.reshape(-1).float(), v.reshape(-1).float()
    fx, fy, cx, cy = (torch.tensor(k[i, j], dtype=torch.float32) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    x = (u - cx) * z / fx
    y = (v - cy) * z / fy
    return torch.stack([x, y, z, torch.ones_like(z)], dim=0)


def world_coordinate_map(depth: np.ndarray, intrinsics: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """float32 (H,W,3) world point of every depth pixel, in float32 like the authors.

    depth: (H,W) metres, 0 = no measurement (kept: it unprojects to the camera centre); NaN is
    treated as 0. intrinsics: (3,3) of the depth image. pose: (4,4) camera-to-model-frame
    (axis_align @ camera-to-world). Pixel (row v, column u) uses integer u, v (no +0.5).
    """
    if np.shape(pose) != (4, 4):
        raise ValueError(f"pose must be (4,4), got {np.shape(pose)}")
    cam = camera_points(depth, intrinsics)
    h, w = np.shape(depth)
    world = torch.from_numpy(np.asarray(pose, dtype=np.float32)) @ cam
    world = (world[:3] / world[3:]).T
    return world.reshape(h, w, 3).contiguous().numpy()


def resize_crop_points(points: np.ndarray, new_size: tuple[int, int], crop: int = CROP_SIZE) -> np.ndarray:
    """float32 (H,W,3) -> (crop,crop,3): cv2 INTER_NEAREST resize to new_size=(h, w), centre crop."""
    h, w = new_size
    resized = cv2.resize(points, (w, h), interpolation=cv2.INTER_NEAREST)
    top, left = crop_box(h, w, crop)
    return resized[top:top + crop, left:left + crop]


def _check_indices(scene: Scene, frame_indices: Sequence[int]) -> list[int]:
    if not isinstance(scene, Scene):
        raise ValueError(f"expected a gs_reasoner_ros.scene.Scene, got {type(scene).__name__}")
    indices = [int(i) for i in np.asarray(frame_indices).reshape(-1)]
    if not indices:
        raise ValueError("frame_indices is empty")
    bad = [i for i in indices if not -len(scene) <= i < len(scene)]
    if bad:
        raise ValueError(f"frame indices {bad} are out of range for a scene of {len(scene)} frames")
    return indices


def model_poses(scene: Scene, indices: Sequence[int]) -> torch.Tensor:
    """float32 (F,4,4) camera-to-model poses: the authors compose the alignment with the pose in
    float32 (align @ pose computed in float32, then applied to the points)."""
    # torch.tensor copies: scene arrays may be read-only (KeyframeStore.to_scene shares them).
    align = torch.tensor(scene.axis_align, dtype=torch.float32)
    return torch.stack([align @ torch.tensor(scene.poses[i], dtype=torch.float32) for i in indices])


def preprocess_frames(scene: Scene, frame_indices: Sequence[int], crop: int = CROP_SIZE
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for the chosen frames: pixel values float32 (F,3,crop,crop) in [-1,1] and world
    coordinates float32 (F,crop,crop,3) in the scene's axis-aligned (model) frame, pixel-aligned.

    The reference path (whole frames, one at a time); FrameCache gives identical results faster."""
    indices = _check_indices(scene, frame_indices)
    poses = model_poses(scene, indices)
    pixels, coords = [], []
    for pose, i in zip(poses.numpy(), indices):
        depth = scene.depth[i]
        # Both maps get the size computed from the DEPTH resolution, as in the authors' code.
        new_size = resized_size(*depth.shape, crop)
        pixels.append(normalize_rgb(resize_crop_rgb(scene.rgb[i], new_size, crop)))
        points = world_coordinate_map(depth, scene.intrinsics[i], pose)
        coords.append(resize_crop_points(points, new_size, crop))
    return np.stack(pixels), np.stack(coords)


def frame_key(scene: Scene, i: int) -> Hashable:
    """Identity of frame i's pose-independent content (colour, depth, intrinsics).

    With scene.frame_ids it is ("id", frame_ids[i]): the id's owner promises the content never
    changes, so two frames with the same id share one entry whatever their pixels. Without ids it
    is a CRC of the pixels (~0.5 ms for 640x480), so equal frames share entries whatever their
    source. The two kinds of key never match each other."""
    if scene.frame_ids is not None:
        return ("id", scene.frame_ids[i])
    rgb, depth = np.ascontiguousarray(scene.rgb[i]), np.ascontiguousarray(scene.depth[i])
    return (rgb.shape, depth.shape, zlib.crc32(depth, zlib.crc32(rgb)), scene.intrinsics[i].tobytes())


class FrameCache:
    """Per-frame preprocessing kept across queries, so a query only applies the poses.

    Per frame (keyed by frame_key) it keeps the normalised crop of the colour image and the
    camera-frame points of the depth map, nearest-resized and cropped (homogeneous, (4, crop*crop)),
    on `device`. A query stacks them and applies the F model poses with one batched matmul; on
    CPU in float32 the result equals preprocess_frames exactly (the per-pixel matmul does not
    depend on which pixels are multiplied together). Least recently used frames are dropped
    beyond `capacity`.
    """

    def __init__(self, device: str | torch.device = "cpu", capacity: int = 256, crop: int = CROP_SIZE):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.device, self.capacity, self.crop = torch.device(device), int(capacity), int(crop)
        self._frames: OrderedDict[Hashable, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        self._frames.clear()

    def _prepare(self, scene: Scene, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        depth = scene.depth[i]
        new_size = resized_size(*depth.shape, self.crop)
        pixels = normalize_rgb(resize_crop_rgb(scene.rgb[i], new_size, self.crop))
        h, w = depth.shape
        # Nearest resize is a gather, so it commutes with the per-pixel pose transform.
        cam = camera_points(depth, scene.intrinsics[i]).T.reshape(h, w, 4).contiguous().numpy()
        cam = resize_crop_points(cam, new_size, self.crop).reshape(-1, 4).T
        return (torch.from_numpy(pixels).to(self.device),
                torch.from_numpy(np.ascontiguousarray(cam)).to(self.device))

    def add(self, scene: Scene, frame_indices: Sequence[int] | None = None) -> list[Hashable]:
        """Prepare (or refresh in the LRU order) the given frames, all frames when None; returns their keys."""
        indices = range(len(scene)) if frame_indices is None else _check_indices(scene, frame_indices)
        keys = []
        for i in indices:
            key = frame_key(scene, i)
            if key in self._frames:
                self.hits += 1
                self._frames.move_to_end(key)
            else:
                self.misses += 1
                self._frames[key] = self._prepare(scene, i)
                while len(self._frames) > self.capacity:
                    self._frames.popitem(last=False)
            keys.append(key)
        return keys

    def inputs(self, scene: Scene, frame_indices: Sequence[int], keys: Sequence[Hashable] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like preprocess_frames, as float32 tensors on the cache's device: pixel values
        (F,3,crop,crop) and model-frame coordinates (F,crop,crop,3). `keys` from add() skips hashing."""
        indices = _check_indices(scene, frame_indices)
        if keys is None or len(keys) != len(indices) or any(k not in self._frames for k in keys):
            keys = self.add(scene, indices)
        if len(set(keys)) > self.capacity:
            raise ValueError(f"{len(set(keys))} distinct frames do not fit a FrameCache of capacity {self.capacity}")
        entries = [self._frames[k] for k in keys]
        pixels = torch.stack([e[0] for e in entries])
        cam = torch.stack([e[1] for e in entries])  # (F, 4, crop*crop)
        world = torch.bmm(model_poses(scene, indices).to(self.device), cam)
        world = (world[:, :3] / world[:, 3:]).transpose(1, 2)
        return pixels, world.reshape(len(indices), self.crop, self.crop, 3)
