"""Floor leveling and wall fitting (alignment.py through geometry.estimate_alignment) on rendered
rooms with known floor and walls: tilted maps, a y-down camera frame, walls facing the camera,
no floor at all, noisy depth at many headings, and boxes going back to the world exactly."""
from __future__ import annotations

import numpy as np
import pytest

from gs_reasoner_ros import geometry as g
from gs_reasoner_ros.synthetic import camera_path, default_intrinsics, look_at, make_room, render_rgbd

Z, X = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])


def rot(axis: int, deg: float) -> np.ndarray:
    """3x3 rotation about x (0), y (1) or z (2)."""
    T = g.make_transform([0, 0, 0], np.append(np.sin(np.radians(deg) / 2) * np.eye(3)[axis],
                                              np.cos(np.radians(deg) / 2)))
    return T[:3, :3]


def render(room, poses, noise: bool = False, seed: int = 0, size=(160, 120)) -> np.ndarray:
    """World points seen from `poses`; with noise: Kinect-like depth noise and each view's pose
    off by ~0.3 deg and 1 cm, as in a fused RGB-D map."""
    rng = np.random.default_rng(seed)
    K = default_intrinsics(*size)
    clouds = []
    for T in poses:
        _, depth = render_rgbd(room, K, T, *size)
        if noise:
            depth = depth + rng.normal(0, 1, depth.shape) * (0.0012 + 0.0019 * (depth - 0.4) ** 2)
            T = T.copy()
            T[:3, :3] = rot(int(rng.integers(3)), rng.normal(0, 0.3)) @ T[:3, :3]
            T[:3, 3] += rng.normal(0, 0.01, 3)
        clouds.append(g.transform_points(T, g.unproject_depth(depth, K)).reshape(-1, 3))
    return np.concatenate(clouds)


def up_error(A, true_up) -> float:
    return float(np.degrees(np.arccos(np.clip(A[2, :3] @ true_up, -1, 1))))


def wall_error(A, true_normal) -> float:
    w = A[:3, :3] @ true_normal
    return abs((np.degrees(np.arctan2(w[1], w[0])) + 45.0) % 90.0 - 45.0)


@pytest.fixture(scope="module")
def room():
    r = make_room(3)
    poses = camera_path(r, 6, 3)
    return r, poses, render(r, poses)


@pytest.mark.parametrize("tilt", [(3.0, -2.0), (0.0, 5.0), (-4.0, 0.0)])
def test_tilted_room_is_leveled_within_a_degree(room, tilt):
    _, _, points = room
    R = rot(0, tilt[0]) @ rot(1, tilt[1]) @ rot(2, 31.0)
    A, info = g.estimate_alignment(points @ R.T, return_info=True)
    assert info.floor_found and info.leveled
    assert up_error(A, R @ Z) < 1.0 and wall_error(A, R @ X) < 1.0
    tilt_deg = np.degrees(np.arccos((R @ Z)[2]))
    assert info.gravity_error_deg == pytest.approx(tilt_deg, abs=0.5)
    assert info.up_correction_deg == pytest.approx(tilt_deg, abs=0.5)
    assert np.allclose(info.up, A[2, :3]) and "leveled to the floor" in info.level_reason


def test_level_false_trusts_the_given_up_but_still_checks_it(room):
    _, _, points = room
    R = rot(0, 3.0)
    A, info = g.estimate_alignment(points @ R.T, level=False, return_info=True)
    np.testing.assert_allclose(A[2, :3], Z, atol=1e-12)  # up kept exactly
    assert not info.leveled and info.floor_found and "level=False" in info.level_reason
    assert info.gravity_error_deg == pytest.approx(3.0, abs=0.5)


def test_y_down_first_camera_frame_is_recovered_with_the_cameras_up(room):
    _, poses, points = room
    cam0 = g.invert_transform(poses[0])  # a visual SLAM's world: the first camera's frame, y down
    local = g.transform_points(cam0, points)
    true_up, true_wall = cam0[:3, :3] @ Z, cam0[:3, :3] @ X
    hint, _ = g.camera_up(cam0 @ poses[:1])  # the first camera's own up: pitched 10-20 deg
    assert up_error(np.vstack([np.eye(3)[:2], hint]), true_up) > 10.0  # the hint alone is off
    A, info = g.estimate_alignment(local, up=hint, return_info=True)
    assert info.floor_found and info.leveled
    assert up_error(A, true_up) < 1.0 and wall_error(A, true_wall) < 1.0
    # the same from the poses, when the caller passes world_frame's z (90 degrees off) as up
    A2, info2 = g.estimate_alignment(local, up=(0, 0, 1), poses=cam0 @ poses, return_info=True)
    assert up_error(A2, true_up) < 1.0 and "cameras' up" in info2.level_reason


def test_a_wall_facing_a_pitched_camera_is_not_taken_for_the_floor():
    room = make_room(5, n_objects=1)
    x = -room.size[0] / 2 + 1.0  # 1 m from the -x wall, facing the +x wall
    far = room.size[0] / 2 - x
    T = look_at([x, 0.0, 1.4], [x + far, 0.0, 1.4 - far * np.tan(np.radians(20))])  # 20 deg down
    points = render(room, [T], size=(240, 180))
    cam = g.invert_transform(T)
    local = g.transform_points(cam, points)  # y down; the wall's normal is 20 deg from the optical axis
    hint, _ = g.camera_up(cam @ T[None])  # 20 degrees off the true up
    A, info = g.estimate_alignment(local, up=hint, return_info=True)
    assert info.floor_found and up_error(A, cam[:3, :3] @ Z) < 1.0  # the floor, not the wall
    # a camera 0.7 m from the wall sees no floor: the wall must not become one either
    near = look_at([room.size[0] / 2 - 0.7, 0, 1.4], [room.size[0] / 2, 0, 1.4 - 0.7 * np.tan(np.radians(20))])
    cam = g.invert_transform(near)
    wall_only = g.transform_points(cam, render(room, [near], size=(240, 180)))
    A, info = g.estimate_alignment(wall_only, up=g.camera_up(cam @ near[None])[0], return_info=True)
    assert not info.floor_found and not info.leveled


@pytest.mark.parametrize("hint_tilt", [0.0, 3.0])
def test_no_visible_floor_keeps_the_given_up_and_says_so(hint_tilt):
    room = make_room(3, n_objects=1)
    x = room.size[0] / 2 - 0.7
    T = look_at([x, 0.0, 1.5], [x + 1.0, 0.0, 1.5])  # straight at a wall
    points = render(room, [T], size=(240, 180)) @ rot(0, hint_tilt).T
    A, info = g.estimate_alignment(points, return_info=True)
    assert not info.floor_found and not info.leveled and info.up_correction_deg == 0.0
    np.testing.assert_allclose(A[2, :3], Z, atol=1e-12)  # nothing to level to: z kept as given
    assert np.isnan(info.gravity_error_deg) and info.gravity_ok
    assert "no clear floor" in info.level_reason and "kept up as given" in info.message


def test_heading_sweep_on_a_noisy_room_stays_within_2_degrees():
    room = make_room(3)
    points = render(room, camera_path(room, 8, 3), noise=True, seed=1)
    errors = []
    for heading in (7.0, 29.5, 52.0, 74.5, 203.0, 340.0):
        R = rot(2, heading) @ rot(0, 1.5)
        A, info = g.estimate_alignment(points @ R.T, return_info=True)
        assert info.walls_found
        errors.append((up_error(A, R @ Z), wall_error(A, R @ X)))
    errors = np.array(errors)
    assert errors[:, 0].max() < 1.0 and errors[:, 1].max() < 2.0
    assert np.ptp(errors[:, 1]) < 1.0  # steady as the map turns, not only within the bound


def test_boxes_round_trip_through_a_leveled_alignment(room):
    r, _, points = room
    R = rot(0, 4.0) @ rot(1, -2.0) @ rot(2, 58.0)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, [1.5, -2.0, 0.3]  # the room somewhere in a tilted world frame
    A, info = g.estimate_alignment(g.transform_points(T, points), return_info=True)
    assert info.leveled and g.is_rigid(A, 1e-9)
    for label, center, quat, size in r.world_boxes():
        corners = g.transform_points(T, g.box_corners(center, quat, size))
        in_model = g.transform_points(A, corners)
        lo, hi = in_model.min(axis=0), in_model.max(axis=0)  # the box the model would answer
        c2, q2, s2 = g.aligned_box_to_world(lo, hi, A)
        np.testing.assert_allclose(c2, corners.mean(axis=0), atol=1e-9)  # back exactly
        np.testing.assert_allclose(g.transform_points(A, g.box_corners(c2, q2, s2)).min(axis=0), lo, atol=1e-9)
        # leveled and squared: the model-frame box hugs the object (the walls may land on x or y)
        ext, tol = hi - lo, 0.02 * size.max() + 0.005
        assert abs(ext[2] - size[2]) < tol and np.abs(np.sort(ext[:2]) - np.sort(size[:2])).max() < tol, label


def test_a_single_wall_seen_face_on_gives_its_own_heading():
    # one plane, all its points in one bin along its normal: the sharpest heading must be that
    # normal (a histogram edge once dropped the spike's smoothed mass and picked 17 degrees)
    room = make_room(3, n_objects=1)
    x = room.size[0] / 2 - 0.7
    points = render(room, [look_at([x, 0.0, 1.5], [x + 1.0, 0.0, 1.5])], size=(240, 180))
    A, info = g.estimate_alignment(points @ rot(2, 12.0).T, return_info=True)
    assert info.walls_found and wall_error(A, rot(2, 12.0) @ X) < 0.5 and info.wall_support > 0.9
