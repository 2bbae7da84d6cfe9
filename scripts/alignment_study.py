#!/usr/bin/env python3
"""How well `geometry.estimate_alignment` levels a map and squares it to the walls (ROS-free).

Clouds: a rendered room (synthetic.py, clean and with Kinect-like depth noise plus small pose
errors, as a fused RGB-D map is), and the real 3DMatch frames (../shared/data/rgbd_3dmatch),
each fused into a 2 cm voxel map (mean point per voxel, like the node's map). Each cloud is
turned through HEADINGS about the true up and tilted by TILTS (degrees about x and y), and we
measure the up error (angle between the up A uses and the true up) and the wall error (the true
wall normal's heading in the model frame, modulo 90 degrees).

Truth. Rendered room: the room's own floor normal and walls. 3DMatch: no ground truth exists;
the reference is the fit on the untouched cloud (all points, the cameras' up as the hint), and
the errors measure EQUIVARIANCE: how far the fit on the turned/tilted cloud is from the
reference turned/tilted the same way. 3DMatch "y down": the cloud in the first camera's frame
(as a visual SLAM that starts there would give it) with `camera_up(poses)` as the hint.

Also: time per alignment on the 2 cm map of the rendered room (median over repeats) and a
camera that sees only a wall (no floor). `--baseline REV` runs the same study on
estimate_alignment as it was at git revision REV (e.g. the commit before issue 15).

    python scripts/alignment_study.py [--baseline 288026e] [--out scripts/alignment_results.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gs_reasoner_ros import geometry as g  # noqa: E402
from gs_reasoner_ros.synthetic import camera_path, default_intrinsics, look_at, make_room, render_rgbd  # noqa: E402

HEADINGS = np.arange(16) * 22.5 + 7.0  # 16 headings over the full turn, none a multiple of 90
TILTS = [(0, 0), (1, 0), (0, 2), (3, -1), (-2, 4), (5, 0), (0, -5), (3.5, 3.5)]  # deg about x, y
DATA = ROOT.parent / "shared" / "data" / "rgbd_3dmatch"


def rot(axis: int, deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def voxel_mean(points: np.ndarray, size: float = 0.02) -> np.ndarray:
    """One point per `size` voxel, the mean of the points in it (the node's map)."""
    points = points[np.all(np.isfinite(points), axis=1)]
    _, inv, counts = np.unique(np.floor(points / size).astype(np.int64), axis=0, return_inverse=True,
                               return_counts=True)
    inv = inv.reshape(-1)
    return np.stack([np.bincount(inv, points[:, k]) for k in range(3)], 1) / counts[:, None]


def fuse(depths, K, poses) -> np.ndarray:
    return np.concatenate([g.transform_points(T, g.unproject_depth(d, K)).reshape(-1, 3)
                           for d, T in zip(depths, poses)])


def kinect_noise(depth: np.ndarray, rng) -> np.ndarray:
    """Axial noise of a structured-light sensor (Nguyen et al. 2012), quantised to 1 mm."""
    sigma = 0.0012 + 0.0019 * (depth - 0.4) ** 2
    return np.round((depth + rng.normal(0, 1, depth.shape) * sigma) * 1000) / 1000


def jitter(T: np.ndarray, rng, deg: float = 0.3, metres: float = 0.01) -> np.ndarray:
    """A pose with a small random error (a SLAM's drift between keyframes)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.radians(rng.normal(0, deg))
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    out = T.copy()
    out[:3, :3] = (np.eye(3) + np.sin(a) * Kx + (1 - np.cos(a)) * Kx @ Kx) @ T[:3, :3]
    out[:3, 3] += rng.normal(0, metres, 3)
    return out


def room_cloud(noisy: bool, seed: int = 3, views: int = 12, size=(320, 240)):
    """2 cm map of a rendered room (room frame = world: floor z = 0, walls along x and y)."""
    room = make_room(seed)
    K = default_intrinsics(*size)
    rng = np.random.default_rng(seed)
    depths, poses = [], []
    for T in camera_path(room, views, seed):
        _, d = render_rgbd(room, K, T, *size)
        depths.append(kinect_noise(d, rng) if noisy else d)
        poses.append(jitter(T, rng) if noisy else T)
    return voxel_mean(fuse(depths, K, poses)), np.stack(poses)


def wall_only_cloud(seed: int = 3):
    """A camera 0.7 m from a wall, looking straight at it: no floor in view."""
    room = make_room(seed, n_objects=1)
    K = default_intrinsics(320, 240)
    x = room.size[0] / 2 - 0.7
    T = look_at([x, 0.0, 1.5], [x + 1.0, 0.0, 1.5])
    _, d = render_rgbd(room, K, T, 320, 240)
    return voxel_mean(fuse([d], K, [T])), T[None]


def load_3dmatch():
    from gs_reasoner_ros.scene import load_3dmatch as load
    s = load(DATA)
    return voxel_mean(fuse(s.depth, s.intrinsics[0], s.poses)), s.poses


def errors(A: np.ndarray, true_up: np.ndarray, true_wall: np.ndarray) -> tuple[float, float]:
    """(up error, wall error mod 90) in degrees of the alignment A for the given truth."""
    up_used = A[2, :3]  # the world direction A sends to +z
    up_err = float(np.degrees(np.arccos(np.clip(up_used @ true_up, -1, 1))))
    w = A[:3, :3] @ true_wall
    wall = float(np.degrees(np.arctan2(w[1], w[0])))
    return up_err, abs((wall + 45.0) % 90.0 - 45.0)


def sweep(align, points, poses, up_true, wall_true, hint_from_poses: bool, base_rot=np.eye(3)):
    """Errors over HEADINGS x TILTS. The cloud (and poses) are turned by R = tilt @ heading about
    the true up, composed after `base_rot`; hint: +z, or the cameras' up when hint_from_poses."""
    R_up = _frame_with_z(up_true)
    rows = []
    for heading in HEADINGS:
        for tx, ty in TILTS:
            R = base_rot @ R_up.T @ rot(0, tx) @ rot(1, ty) @ rot(2, heading) @ R_up
            hint = g.camera_up(_turn_poses(R, poses))[0] if hint_from_poses else np.array([0.0, 0, 1])
            A = align(points @ R.T, hint)
            up_err, wall_err = errors(A, R @ up_true, R @ wall_true)
            rows.append((float(heading), tx, ty, up_err, wall_err))
    e = np.array([r[3:] for r in rows])
    return {"n": len(rows), "up_err_deg": _stats(e[:, 0]), "wall_err_mod90_deg": _stats(e[:, 1]),
            "worst": [dict(zip(("heading", "tilt_x", "tilt_y", "up_err", "wall_err"), r))
                      for r in sorted(rows, key=lambda r: -max(r[3], r[4]))[:3]]}


def _frame_with_z(up: np.ndarray) -> np.ndarray:
    """A rotation taking `up` to +z (so tilts and headings are about the true up)."""
    from gs_reasoner_ros.alignment import rotation_to_z
    return rotation_to_z(up / np.linalg.norm(up))


def _turn_poses(R: np.ndarray, poses: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    return T @ poses


def _stats(x: np.ndarray) -> dict:
    return {"median": round(float(np.median(x)), 3), "p95": round(float(np.percentile(x, 95)), 3),
            "max": round(float(x.max()), 3)}


def load_estimator(rev: str | None):
    """estimate_alignment of this tree, or of geometry.py at git revision `rev`."""
    if rev is None:
        return g.estimate_alignment
    text = subprocess.run(["git", "show", f"{rev}:gs_reasoner_ros/geometry.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    mod = types.ModuleType(f"geometry_{rev}")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up there
    exec(compile(text, f"geometry@{rev}", "exec"), mod.__dict__)  # the old module imported only numpy
    return mod.estimate_alignment


def study(rev: str | None, repeats: int) -> dict:
    estimate = load_estimator(rev)

    def align(points, hint):
        return estimate(points, up=hint)

    out = {"code": rev or "this tree", "headings_deg": HEADINGS.tolist(), "tilts_deg": TILTS}
    z, x = np.array([0.0, 0, 1]), np.array([1.0, 0, 0])
    for name, noisy in (("room_clean", False), ("room_noisy", True)):
        pts, poses = room_cloud(noisy)
        out[name] = {"points": len(pts), **sweep(align, pts, poses, z, x, False)}
        print(name, out[name]["up_err_deg"], out[name]["wall_err_mod90_deg"], flush=True)
    if DATA.is_dir():
        pts, poses = load_3dmatch()
        A_ref, info = g.estimate_alignment(pts, up=g.camera_up(poses)[0], max_points=len(pts), return_info=True)
        up_ref, wall_ref = A_ref[2, :3], A_ref[0, :3]  # reference: careful fit of THIS tree
        out["3dmatch_reference"] = {"points": len(pts), "up_world": up_ref.round(5).tolist(),
                                    "wall_normal_world": wall_ref.round(5).tolist(), "message": info.message}
        # z-up: the cloud expressed in the reference frame, hint +z
        out["3dmatch_zup"] = sweep(align, pts, poses, up_ref, wall_ref, False, base_rot=A_ref[:3, :3])
        # y down: the cloud in the first camera's frame, hint = the cameras' up
        cam0 = np.linalg.inv(poses[0])
        out["3dmatch_ydown"] = sweep(align, pts, poses, up_ref, wall_ref, True, base_rot=cam0[:3, :3])
        untouched = align(pts @ cam0[:3, :3].T, g.camera_up(cam0 @ poses)[0])
        e = errors(untouched, cam0[:3, :3] @ up_ref, cam0[:3, :3] @ wall_ref)
        out["3dmatch_ydown"]["first_camera_frame_as_is"] = {"up_err_deg": round(e[0], 3),
                                                            "wall_err_mod90_deg": round(e[1], 3)}
        for k in ("3dmatch_zup", "3dmatch_ydown"):
            print(k, out[k]["up_err_deg"], out[k]["wall_err_mod90_deg"], flush=True)
    pts, _ = room_cloud(True, views=24)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        estimate(pts, up=(0.0, 0, 1))
        times.append(time.perf_counter() - t0)
    out["time_per_alignment"] = {"points": len(pts), "repeats": repeats,
                                 "median_ms": round(1000 * float(np.median(times)), 1),
                                 "min_ms": round(1000 * float(np.min(times)), 1)}
    print("time", out["time_per_alignment"], flush=True)
    wall, wposes = wall_only_cloud()
    cases = {}
    for label, hint in (("up_z", np.array([0.0, 0, 1])), ("cameras_up", g.camera_up(wposes)[0])):
        for tilt in (0.0, 3.0):
            A, info = estimate(wall @ rot(0, tilt).T, up=hint, return_info=True)
            res = {"up_err_deg": round(errors(A, rot(0, tilt) @ [0, 0, 1], x)[0], 3),
                   "kept_input_up": bool(np.allclose(A[2, :3], hint / np.linalg.norm(hint), atol=1e-9)),
                   "message": info.message}
            if hasattr(info, "floor_found"):
                res.update(floor_found=info.floor_found, leveled=info.leveled, level_reason=info.level_reason)
            cases[f"{label}_tilt{tilt:g}"] = res
    out["wall_only_no_floor"] = {"points": len(wall), **cases}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="also run estimate_alignment of geometry.py at this git revision")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "scripts" / "alignment_results.json"))
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the tilted sweeps would warn on every call
    results = {"after": study(None, args.repeats)}
    if args.baseline:
        results["before"] = study(args.baseline, args.repeats)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
