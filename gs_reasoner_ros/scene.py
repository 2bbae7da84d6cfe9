"""A scene: posed RGB-D frames in one world frame, and its file formats.

This is the unit the model reasons over (the node's keyframes, `gs-reasoner infer --scene`,
training samples and exports all become a Scene). Conventions (README: scene files):
depth in metres with 0 or NaN for "no measurement", intrinsics of the depth image, poses
camera-to-world with OpenCV optical axes (x right, y down, z forward).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Scene:
    rgb: np.ndarray  # (N, Hc, Wc, 3) uint8
    depth: np.ndarray  # (N, H, W) float32 metres
    intrinsics: np.ndarray  # (N, 3, 3) float64, of the depth image
    poses: np.ndarray  # (N, 4, 4) float64 camera-to-world
    axis_align: np.ndarray = field(default_factory=lambda: np.eye(4))  # world -> model frame
    stamps: np.ndarray | None = None  # (N,) seconds, optional
    # (N,) hashable ids, optional. An id promises that frame's colour, depth and intrinsics never
    # change (its pose may), so caches can key on it instead of hashing pixels. Not saved to files.
    frame_ids: tuple | None = None

    def __post_init__(self):
        self.rgb = np.asarray(self.rgb)
        self.depth = np.asarray(self.depth, dtype=np.float32)
        self.poses = np.asarray(self.poses, dtype=np.float64)
        self.axis_align = np.asarray(self.axis_align, dtype=np.float64)
        n = len(self.rgb)
        k = np.asarray(self.intrinsics, dtype=np.float64)
        if k.shape == (3, 3):
            k = np.broadcast_to(k, (n, 3, 3)).copy()
        elif k.ndim == 3 and k.shape[1:] == (4, 4):
            k = k[:, :3, :3].copy()
        self.intrinsics = k
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 (N,H,W,3), got {self.rgb.dtype} {self.rgb.shape}")
        if self.depth.ndim != 3 or len(self.depth) != n:
            raise ValueError(f"depth must be (N,H,W) with N={n}, got {self.depth.shape}")
        if self.intrinsics.shape != (n, 3, 3):
            raise ValueError(f"intrinsics must be (3,3) or (N,3,3), got {np.shape(self.intrinsics)}")
        if self.poses.shape != (n, 4, 4):
            raise ValueError(f"poses must be (N,4,4) with N={n}, got {self.poses.shape}")
        if self.axis_align.shape != (4, 4):
            raise ValueError(f"axis_align must be (4,4), got {self.axis_align.shape}")
        if n == 0:
            raise ValueError("a scene needs at least one frame")
        hc, wc = self.rgb.shape[1:3]
        h, w = self.depth.shape[1:3]
        if abs(hc * w - wc * h) > max(h, w):
            raise ValueError(f"colour {wc}x{hc} and depth {w}x{h} must have the same aspect ratio")
        if not np.all(np.isfinite(self.poses)):
            raise ValueError("poses contain NaN or Inf")
        if self.stamps is not None:
            self.stamps = np.asarray(self.stamps, dtype=np.float64).reshape(n)
        if self.frame_ids is not None:
            self.frame_ids = _check_frame_ids(self.frame_ids, n)

    def __len__(self) -> int:
        return len(self.rgb)

    def select(self, indices) -> "Scene":
        idx = np.asarray(indices, dtype=np.int64)
        return Scene(self.rgb[idx], self.depth[idx], self.intrinsics[idx], self.poses[idx],
                     self.axis_align.copy(), None if self.stamps is None else self.stamps[idx],
                     None if self.frame_ids is None else tuple(self.frame_ids[i] for i in idx))

    def world_points(self, stride: int = 4) -> np.ndarray:
        """(N, 3) finite points of every frame's depth (every `stride`-th pixel) in the world frame."""
        from .geometry import transform_points, unproject_depth

        clouds = [transform_points(T, unproject_depth(d, K, stride).reshape(-1, 3))
                  for d, K, T in zip(self.depth, self.intrinsics, self.poses)]
        pts = np.concatenate(clouds) if clouds else np.zeros((0, 3))
        return pts[np.all(np.isfinite(pts), axis=1)]

    def uniform_indices(self, count: int) -> np.ndarray:
        """The authors' frame choice: np.linspace over all frames, as integers."""
        if len(self) <= count:
            return np.arange(len(self))
        return np.linspace(0, len(self) - 1, count, dtype=int)

    def aligned_poses(self) -> np.ndarray:
        """Poses in the model's (axis-aligned) frame: A @ T_world_cam."""
        return self.axis_align @ self.poses

    # ---- files --------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scene":
        path = Path(path)
        if path.is_dir():
            return cls.load_processed(path)
        if path.suffix == ".npz":
            return cls.load_npz(path)
        raise ValueError(f"{path}: expected a .npz scene or a processed-data folder")

    @classmethod
    def load_npz(cls, path) -> "Scene":
        with np.load(path, allow_pickle=False) as z:
            missing = {"rgb", "depth", "intrinsics", "poses"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: missing arrays {sorted(missing)}")
            depth = np.nan_to_num(z["depth"].astype(np.float32), nan=0.0)
            return cls(z["rgb"], depth, z["intrinsics"], z["poses"],
                       z["axis_align"] if "axis_align" in z.files else np.eye(4),
                       z["stamps"] if "stamps" in z.files else None)

    def save_npz(self, path) -> None:
        arrays = dict(rgb=self.rgb, depth=self.depth, intrinsics=self.intrinsics,
                      poses=self.poses, axis_align=self.axis_align)
        if self.stamps is not None:
            arrays["stamps"] = self.stamps
        np.savez_compressed(path, **arrays)

    @classmethod
    def load_processed(cls, folder, count: int | None = None) -> "Scene":
        """GS-Reasoner processed-data layout: color/*.jpg, depth/*.png (uint16 mm),
        pose/*.txt (4x4), intrinsic/intrinsic_depth.txt (4x4), optional axis_align.txt.

        count: read only that many frames, chosen like the authors (np.linspace over all frames
        with a finite pose, as integers); None reads every frame."""
        import cv2

        folder = Path(folder)
        stems = processed_frame_stems(str(folder))
        if count is not None and len(stems) > count:
            stems = tuple(stems[i] for i in np.linspace(0, len(stems) - 1, count, dtype=int))
        rgb, depth, poses = [], [], []
        for stem in stems:
            color = folder / "color" / f"{stem}.jpg"
            if not color.is_file():
                color = folder / "color" / f"{stem}.png"
            d = folder / "depth" / f"{stem}.png"
            if not d.is_file():
                raise ValueError(f"{folder}: depth/{stem}.png is missing")
            bgr = cv2.imread(str(color), cv2.IMREAD_COLOR)
            dep = cv2.imread(str(d), cv2.IMREAD_UNCHANGED)
            if bgr is None or dep is None or dep.dtype != np.uint16:
                raise ValueError(f"{folder}: cannot read frame {stem} (colour jpg/png, depth uint16 png)")
            rgb.append(bgr[..., ::-1])
            depth.append(dep.astype(np.float32) / 1000.0)
            poses.append(np.loadtxt(folder / "pose" / f"{stem}.txt").reshape(4, 4))
        k = np.loadtxt(folder / "intrinsic" / "intrinsic_depth.txt").reshape(4, 4)
        align_file = folder / "axis_align.txt"
        align = np.loadtxt(align_file).reshape(4, 4) if align_file.exists() else np.eye(4)
        return cls(np.stack(rgb), np.stack(depth), k[:3, :3], np.stack(poses), align)

    def save_processed(self, folder) -> Path:
        import cv2

        folder = Path(folder)
        for sub in ("color", "depth", "pose", "intrinsic"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(len(self)):
            name = f"{i:06d}"
            cv2.imwrite(str(folder / "color" / f"{name}.jpg"), self.rgb[i][..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            mm = np.nan_to_num(self.depth[i], nan=0.0) * 1000.0
            cv2.imwrite(str(folder / "depth" / f"{name}.png"), np.clip(np.round(mm), 0, 65535).astype(np.uint16))
            np.savetxt(folder / "pose" / f"{name}.txt", self.poses[i])
        k = np.eye(4)
        k[:3, :3] = self.intrinsics[0]
        np.savetxt(folder / "intrinsic" / "intrinsic_depth.txt", k)
        if not np.allclose(self.axis_align, np.eye(4)):
            np.savetxt(folder / "axis_align.txt", self.axis_align)
        return folder


def _check_frame_ids(ids, n: int) -> tuple:
    """A tuple of n hashable ids (numpy arrays give Python scalars), or ValueError."""
    try:
        if isinstance(ids, (str, bytes)):
            raise TypeError
        ids = tuple(ids.tolist()) if isinstance(ids, np.ndarray) else tuple(ids)
    except TypeError:
        raise ValueError(f"frame_ids must be a sequence of {n} ids, got {type(ids).__name__}") from None
    if len(ids) != n:
        raise ValueError(f"frame_ids has {len(ids)} ids for {n} frames")
    for i, frame_id in enumerate(ids):
        try:
            hash(frame_id)
        except TypeError:
            raise ValueError(f"frame_ids[{i}] is not hashable: {type(frame_id).__name__}") from None
    return ids


@functools.lru_cache(maxsize=4096)
def processed_frame_stems(folder: str) -> tuple[str, ...]:
    """Sorted stems of a processed-data scene's frames that have a finite pose (the authors'
    exporter skips the others). Cached: training reads the same scenes many times."""
    root = Path(folder)
    colors = sorted((root / "color").glob("*.jpg")) + sorted((root / "color").glob("*.png"))
    if not colors:
        raise ValueError(f"{folder}: no color/*.jpg frames (processed-data layout expected)")
    stems = []
    for c in colors:
        pose_file = root / "pose" / f"{c.stem}.txt"
        if not pose_file.is_file():
            raise ValueError(f"{folder}: pose/{c.stem}.txt is missing for {c.name}")
        if np.all(np.isfinite(np.loadtxt(pose_file))):
            stems.append(c.stem)
    if not stems:
        raise ValueError(f"{folder}: no frame has a finite pose")
    return tuple(stems)


def load_3dmatch(folder, names=None) -> Scene:
    """Frames in the 3DMatch / SUN3D layout of ../shared/data/rgbd_3dmatch:
    seq-01/frame-NNNNNN.{color,depth}.png (depth uint16 mm), .pose.txt camera-to-world,
    camera-intrinsics.txt (3x3) beside the sequence folder."""
    import cv2

    folder = Path(folder)
    seq = folder / "seq-01" if (folder / "seq-01").is_dir() else folder
    k_file = seq.parent / "camera-intrinsics.txt"
    k = np.loadtxt(k_file).reshape(3, 3)
    stems = names or sorted(p.name[: -len(".color.png")] for p in seq.glob("frame-*.color.png"))
    rgb = [cv2.imread(str(seq / f"{s}.color.png"), cv2.IMREAD_COLOR)[..., ::-1] for s in stems]
    depth = [cv2.imread(str(seq / f"{s}.depth.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
             for s in stems]
    poses = [np.loadtxt(seq / f"{s}.pose.txt").reshape(4, 4) for s in stems]
    return Scene(np.stack(rgb), np.stack(depth), k, np.stack(poses))
