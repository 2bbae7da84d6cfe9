"""Geometry without ROS: depth unprojection, rigid transforms and quaternions, boxes, IoU,
and the gravity/wall alignment that puts a robot's map into the frame GS-Reasoner was trained in.

Conventions: float64 numpy arrays; quaternions are (x, y, z, w) like geometry_msgs; camera points
use OpenCV optical axes (x right, y down, z forward); transforms are 4x4 homogeneous matrices.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .alignment import fit_frame, rotation_to_z

log = logging.getLogger(__name__)


# ---- validation helpers --------------------------------------------------------------

def as_array(x, name: str, shape: tuple | None = None, finite: bool = True) -> np.ndarray:
    """`x` as float64, with a ValueError naming `name` when the shape or values are wrong.
    `shape` may contain -1 for any length and a leading Ellipsis for any batch dims."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}: {err}") from None
    if shape is not None and not _shape_matches(a.shape, shape):
        raise ValueError(f"{name} must have shape {_shape_text(shape)}, got {a.shape}")
    if finite and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _shape_matches(actual: tuple, wanted: tuple) -> bool:
    if wanted and wanted[0] is Ellipsis:
        tail = wanted[1:]
        return len(actual) >= len(tail) and _shape_matches(actual[len(actual) - len(tail):], tail)
    return len(actual) == len(wanted) and all(w == -1 or a == w for a, w in zip(actual, wanted))


def _shape_text(shape: tuple) -> str:
    return "(" + ",".join("..." if s is Ellipsis else "N" if s == -1 else str(s) for s in shape) + ")"


def check_intrinsics(K) -> np.ndarray:
    """K as a float64 (3,3) pinhole matrix; ValueError unless fx, fy > 0 and all entries finite."""
    K = as_array(K, "K", (3, 3))
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must have positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")
    return K


def check_transform(T, name: str = "T", tol: float = 1e-4) -> np.ndarray:
    """T as a float64 (4,4) rigid transform; ValueError if it is not finite or not rigid."""
    T = as_array(T, name, (4, 4))
    if not is_rigid(T, tol):
        raise ValueError(f"{name} is not a rigid transform (rotation must be orthonormal with det +1, "
                         f"last row 0 0 0 1)")
    return T


# ---- points and transforms ---------------------------------------------------------

def unproject_depth(depth, K, stride: int = 1) -> np.ndarray:
    """Camera-frame points (H',W',3) of a depth image in metres, sampled every `stride` pixels.

    Pixel (v=row, u=col) of the strided grid is pixel (v*stride, u*stride) of the image, taken
    at its integer coordinate (the convention of the scene files and GS-Reasoner's unproject).
    Depth 0, negative or non-finite gives NaN points."""
    d = np.asarray(depth)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"depth must be a non-empty (H,W) image, got shape {d.shape}")
    if not np.issubdtype(d.dtype, np.floating):
        raise ValueError(f"depth must be float metres, got {d.dtype} (convert 16UC1 millimetres first)")
    K = check_intrinsics(K)
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    stride = int(stride)
    z = d[::stride, ::stride].astype(np.float64)
    z = np.where(np.isfinite(z) & (z > 0), z, np.nan)
    u = np.arange(0, d.shape[1], stride, dtype=np.float64)
    v = np.arange(0, d.shape[0], stride, dtype=np.float64)
    x = (u[None, :] - K[0, 2]) / K[0, 0] * z
    y = (v[:, None] - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=-1)


def transform_points(T, pts) -> np.ndarray:
    """Apply the 4x4 transform T to points of shape (...,3). NaN points stay NaN."""
    T = as_array(T, "T", (4, 4))
    p = as_array(pts, "pts", (Ellipsis, 3), finite=False)
    return p @ T[:3, :3].T + T[:3, 3]


def matrix_from_quat(q) -> np.ndarray:
    """Rotation matrix (3,3) of a quaternion (x, y, z, w); the quaternion is normalised first."""
    q = as_array(q, "quaternion", (4,))
    n = np.linalg.norm(q)
    if n < 1e-12:
        raise ValueError("quaternion has zero length")
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def quat_from_matrix(R, tol: float = 1e-3) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0 of a rotation matrix (3,3).

    Uses the largest of the four candidate pivots (Shepperd), so it is accurate near 180-degree
    rotations too. Rejects matrices that are not rotations within `tol`."""
    R = as_array(R, "rotation", (3, 3))
    if np.abs(R @ R.T - np.eye(3)).max() > tol or np.linalg.det(R) < 0:
        raise ValueError("matrix is not a rotation (must be orthonormal with det +1)")
    tr = np.trace(R)
    pivots = [tr, R[0, 0], R[1, 1], R[2, 2]]
    k = int(np.argmax(pivots))
    if k == 0:
        s = 2.0 * np.sqrt(max(1.0 + tr, 0.0))
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    elif k == 1:
        s = 2.0 * np.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))
        q = [s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(max(1.0 - R[0, 0] + R[1, 1] - R[2, 2], 0.0))
        q = [(R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(max(1.0 - R[0, 0] - R[1, 1] + R[2, 2], 0.0))
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def make_transform(translation, quat) -> np.ndarray:
    """4x4 transform from a translation (3,) and a quaternion (x, y, z, w)."""
    T = np.eye(4)
    T[:3, :3] = matrix_from_quat(quat)
    T[:3, 3] = as_array(translation, "translation", (3,))
    return T


def is_rigid(T, tol: float = 1e-6) -> bool:
    """True when T is a finite 4x4 rigid transform: orthonormal rotation, det +1, last row 0 0 0 1."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return bool(np.abs(R @ R.T - np.eye(3)).max() <= tol
                and abs(np.linalg.det(R) - 1.0) <= tol
                and np.abs(T[3] - [0, 0, 0, 1]).max() <= tol)


def invert_transform(T) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (transpose the rotation rather than a general inverse)."""
    T = as_array(T, "T", (4, 4))
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


def rotation_z(yaw: float) -> np.ndarray:
    """4x4 rotation about +z by `yaw` radians."""
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


# ---- boxes ----------------------------------------------------------------------

def aabb_iou(min_a, max_a, min_b, max_b) -> float:
    """Intersection over union of two axis-aligned 3D boxes given by their corners.
    Boxes of zero volume give 0."""
    lo_a, hi_a = as_array(min_a, "min_a", (3,)), as_array(max_a, "max_a", (3,))
    lo_b, hi_b = as_array(min_b, "min_b", (3,)), as_array(max_b, "max_b", (3,))
    if np.any(hi_a < lo_a) or np.any(hi_b < lo_b):
        raise ValueError("box max must be >= box min on every axis")
    inter = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0.0, None))
    union = np.prod(hi_a - lo_a) + np.prod(hi_b - lo_b) - inter
    return float(inter / union) if union > 0 else 0.0


def box_corners(center, quat, size) -> np.ndarray:
    """The 8 corners (8,3) of an oriented box. Corner i has the sign of bit 0 of i on the box's x
    axis, bit 1 on y and bit 2 on z (0 = minus), so corners 0-3 are the bottom face."""
    c = as_array(center, "center", (3,))
    s = as_array(size, "size", (3,))
    if np.any(s < 0):
        raise ValueError(f"box size must be non-negative, got {s}")
    bits = (np.arange(8)[:, None] >> np.arange(3)) & 1
    local = (bits - 0.5) * s
    return local @ matrix_from_quat(quat).T + c


def box_edges() -> np.ndarray:
    """The 12 edges of `box_corners` as (12,2) corner index pairs (for LINE_LIST markers)."""
    return np.array([(i, i | (1 << axis)) for axis in range(3) for i in range(8) if not i >> axis & 1])


def aligned_box_to_world(box_min, box_max, A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(center (3,), quat xyzw, size (3,)) in the world frame of the box [box_min, box_max] that is
    axis-aligned in the model frame, where A maps world -> model."""
    lo, hi = as_array(box_min, "box_min", (3,)), as_array(box_max, "box_max", (3,))
    if np.any(hi < lo):
        raise ValueError(f"box_max {hi} must be >= box_min {lo} on every axis")
    world_from_model = invert_transform(check_transform(A, "A"))
    center = world_from_model[:3, :3] @ ((lo + hi) / 2) + world_from_model[:3, 3]
    return center, quat_from_matrix(world_from_model[:3, :3]), hi - lo


# ---- gravity and wall alignment --------------------------------------------------------

@dataclass
class AlignmentInfo:
    """What `estimate_alignment` found, for logs, /diagnostics and query responses."""
    yaw_deg: float  # wall direction found, modulo 90 degrees; A turns the world by minus this about up
    walls_found: bool  # False: too little vertical planar structure, yaw left at 0
    wall_support: float  # fraction of vertical plane area within 5 deg (mod 90) of the wall direction
    gravity_error_deg: float  # angle between the fitted floor's normal and `up`; NaN if no floor found
    gravity_ok: bool  # gravity_error_deg <= gravity_tol_deg (or no floor found): `up` was gravity
    message: str  # one line with all of the above
    floor_found: bool  # a clear floor (lowest large horizontal plane within cone_deg of up) was fitted
    leveled: bool  # A levels the map to that floor; False: A keeps `up` as given (see level_reason)
    up_correction_deg: float  # how far A's up is from the given `up` (0 when kept)
    level_reason: str  # short: "leveled to the floor (2.3 deg)", "kept up as given: no clear floor (...)"
    up: tuple  # the up direction A uses, in world coordinates (A maps it to +z)
    floor_area_m2: float  # area of the plane taken for the floor (0 when none)


def estimate_alignment(points, up=(0.0, 0.0, 1.0), *, cell: float | None = None, gravity_tol_deg: float = 5.0,
                       max_points: int = 50_000, seed: int = 0, return_info: bool = False, level: bool = True,
                       cone_deg: float = 30.0, level_tol_deg: float = 0.5, poses=None):
    """The 4x4 transform A (world -> model frame) that GS-Reasoner expects: z along gravity,
    dominant walls parallel to x and y, origin at the cloud's centroid in x and y.

    `up` is a hint, not a truth: the floor is fitted (the lowest large horizontal plane whose
    normal is within `cone_deg` of `up`, see alignment.fit_floor) and, when it is clear and more
    than `level_tol_deg` off, A levels the map to it; otherwise A keeps `up` and the info says
    why. `level=False` trusts `up` as is (a world frame known to be gravity-aligned); the floor is
    still fitted for the check. Where world_frame's up may be far off (a visual SLAM starting in
    the first camera's frame: y down), pass the frames' camera-to-world `poses` (N,4,4): a hint
    more than `cone_deg` from their `camera_up` is replaced by it (level_reason says so). Walls: the
    heading at which the vertical surfaces' projections are sharpest (alignment.fit_walls),
    plane-based and independent of the map's heading.

    Choice of origin: z is kept (only x and y are centred) because a REP-105 map already has its
    floor near z = 0, like the axis-aligned ScanNet scenes that dominate the training data; the
    model tolerates origin offsets (its training adds +-1 m shifts). A is rigid, so boxes found
    in the model frame map back exactly with its inverse (aligned_box_to_world).

    `cell`: flat-cell edge in metres (default: 10 cm, doubled up to 40 cm on coarse or noisy
    maps). When the floor is more than `gravity_tol_deg` from `up` the info says the map is not
    gravity-aligned and a warning is logged (A levels it anyway unless level=False). Points
    beyond `max_points` are subsampled with `seed`.

    Returns A, or (A, AlignmentInfo) with return_info=True."""
    pts = as_array(points, "points", (-1, 3), finite=False)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        raise ValueError("estimate_alignment needs at least one finite point")
    up = as_array(up, "up", (3,))
    if np.linalg.norm(up) < 1e-9:
        raise ValueError("up must be a non-zero vector")
    if cell is not None and not cell > 0:
        raise ValueError(f"cell must be positive, got {cell}")
    if not 0 < cone_deg < 90:
        raise ValueError(f"cone_deg must be in (0, 90), got {cone_deg}")
    up = up / np.linalg.norm(up)
    hint_note = ""
    if poses is not None:
        cam_up, _ = camera_up(poses)
        off = float(np.degrees(np.arccos(np.clip(up @ cam_up, -1.0, 1.0))))
        if off > cone_deg:  # the floor cannot be within the cone around `up`: trust the cameras
            up, hint_note = cam_up, f" (up hint: the cameras' up, {off:.0f} deg from the given up)"
    centroid = pts.mean(axis=0)  # of every point; only the fitting is subsampled
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(seed).choice(len(pts), max_points, replace=False)]
    R_up = rotation_to_z(up)
    fit = fit_frame(pts @ R_up.T, cell=cell, level=level, cone_deg=cone_deg, level_tol_deg=level_tol_deg, seed=seed)
    rot = fit.rotation @ R_up
    A = np.eye(4)
    A[:3, :3] = rot
    A[:3, 3] = -rot @ centroid
    A[2, 3] = 0.0  # keep z: only x and y are centred (see docstring)

    gravity_err = fit.floor.tilt_deg if fit.floor.found else float("nan")
    gravity_ok = not gravity_err > gravity_tol_deg
    parts = [fit.walls.reason if fit.walls.found else f"no dominant walls ({fit.walls.reason}), yaw left at 0"]
    if np.isnan(gravity_err):
        parts.append("no floor seen, gravity unchecked")
    else:
        parts.append(f"floor normal {gravity_err:.1f} deg from up")
    if not gravity_ok:
        parts.append(f"WARNING: more than {gravity_tol_deg} deg, the map is not gravity-aligned")
        log.warning("estimate_alignment: floor normal is %.1f deg from up; the model expects a "
                    "gravity-aligned z-up world (%s)", gravity_err, fit.level_reason + hint_note)
    parts.append(fit.level_reason + hint_note)
    info = AlignmentInfo(float(np.degrees(fit.walls.yaw)), fit.walls.found, fit.walls.support, gravity_err,
                         gravity_ok, "; ".join(parts), fit.floor.found, fit.leveled, fit.correction_deg,
                         fit.level_reason + hint_note, tuple(float(v) for v in rot[2]), fit.floor.area_m2)
    return (A, info) if return_info else A


def camera_up(poses) -> tuple[np.ndarray, float]:
    """The world's up direction as the cameras see it: minus the mean of the optical y axes
    (y is down in the image) of camera-to-world poses (N,4,4), and how far (degrees) it is from
    the most tilted camera's own up. Cameras rarely roll, so this catches a world whose up axis
    is not z, which the plane-based gravity check cannot (turned 90 degrees, walls look like
    floors). Compare it with (0, 0, 1) before trusting `estimate_alignment`."""
    T = as_array(poses, "poses", (-1, 4, 4))
    if len(T) == 0:
        raise ValueError("camera_up needs at least one pose")
    downs = T[:, :3, 1]
    mean = downs.mean(axis=0)
    if np.linalg.norm(mean) < 1e-6:
        raise ValueError("camera y axes cancel out: no consistent up direction")
    up = -mean / np.linalg.norm(mean)
    spread = float(np.degrees(np.arccos(np.clip((-downs @ up).min(), -1.0, 1.0))))
    return up, spread


def near_mask(query, ref, cell, reach) -> np.ndarray:
    """For each (N,3) `query` point: is there a `ref` point in the (2*reach+1)^3 block of
    `cell`-sized grid cells around it (within reach*cell per axis, up to one cell of rounding)?
    A grid test instead of a KD-tree: how much of one cloud another covers, or where."""
    query, ref = np.asarray(query, dtype=np.float64).reshape(-1, 3), np.asarray(ref, dtype=np.float64).reshape(-1, 3)
    if len(query) == 0 or len(ref) == 0:
        return np.zeros(len(query), bool)
    base, q = np.floor(ref / cell).astype(np.int64), np.floor(query / cell).astype(np.int64)
    lo = np.minimum(base.min(0), q.min(0)) - reach
    dims = np.maximum(base.max(0), q.max(0)) - lo + reach + 1

    def key(ijk):
        return ((ijk[:, 0] - lo[0]) * dims[1] + (ijk[:, 1] - lo[1])) * dims[2] + (ijk[:, 2] - lo[2])

    occupied = np.unique(key(base))
    found = np.zeros(len(q), bool)
    r = range(-reach, reach + 1)
    for offset in np.array(np.meshgrid(r, r, r)).reshape(3, -1).T:
        k = key(q + offset)
        i = np.minimum(np.searchsorted(occupied, k), len(occupied) - 1)
        found |= occupied[i] == k
    return found


def fraction_near(query, ref, cell, reach, max_queries=20_000) -> float:
    """Fraction of `query` points near_mask finds near `ref`; queries beyond max_queries are
    subsampled evenly."""
    query = np.asarray(query).reshape(-1, 3)
    return float(near_mask(query[:: max(1, len(query) // max_queries)], ref, cell, reach).mean())
