"""Geometry: unprojection, transforms, quaternions, boxes, IoU and the gravity/wall alignment,
each against hand-computed values or an independent construction."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from gs_reasoner_ros import geometry as g
from gs_reasoner_ros.synthetic import camera_path, default_intrinsics, make_room, render_rgbd


def rodrigues(axis, angle) -> np.ndarray:
    """Rotation matrix from axis-angle (an independent construction for the quaternion tests)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


# ---- unprojection and transforms ---------------------------------------------------

def test_unproject_depth_matches_hand_computation():
    K = np.array([[2.0, 0, 1.0], [0, 4.0, 1.0], [0, 0, 1]])
    depth = np.array([[1.0, 2.0, 0.0, 4.0],
                      [1.0, np.nan, 3.0, -1.0],
                      [2.0, 2.0, 2.0, 2.0]], np.float32)
    pts = g.unproject_depth(depth, K)
    assert pts.shape == (3, 4, 3) and pts.dtype == np.float64
    # pixel (row 0, col 3), z = 4: x = (3 - 1) / 2 * 4 = 4, y = (0 - 1) / 4 * 4 = -1
    np.testing.assert_allclose(pts[0, 3], [4.0, -1.0, 4.0])
    # pixel (row 2, col 0), z = 2: x = (0 - 1) / 2 * 2 = -1, y = (2 - 1) / 4 * 2 = 0.5
    np.testing.assert_allclose(pts[2, 0], [-1.0, 0.5, 2.0])
    for r, c in [(0, 2), (1, 1), (1, 3)]:  # zero, NaN and negative depth
        assert np.all(np.isnan(pts[r, c]))
    strided = g.unproject_depth(depth, K, stride=2)
    assert strided.shape == (2, 2, 3)
    # strided pixel (1, 1) is image pixel (row 2, col 2): x = (2 - 1) / 2 * 2 = 1, y = 0.5
    np.testing.assert_allclose(strided[1, 1], [1.0, 0.5, 2.0])


@pytest.mark.parametrize("bad, match", [
    (dict(depth=np.zeros((2, 2), np.uint16)), "float metres"),
    (dict(depth=np.zeros(4, np.float32)), r"\(H,W\)"),
    (dict(K=np.diag([0.0, 1.0, 1.0])), "positive focal"),
    (dict(K=np.full((3, 3), np.nan)), "NaN"),
    (dict(stride=0), "stride"),
])
def test_unproject_depth_rejects_bad_input(bad, match):
    args = dict(depth=np.ones((2, 2), np.float32), K=np.eye(3), stride=1) | bad
    with pytest.raises(ValueError, match=match):
        g.unproject_depth(args["depth"], args["K"], args["stride"])


def test_transform_points_matches_per_point_loop():
    rng = np.random.default_rng(0)
    T = g.make_transform(rng.normal(size=3), rng.normal(size=4))
    pts = rng.normal(size=(2, 5, 3))
    out = g.transform_points(T, pts)
    for idx in np.ndindex(2, 5):
        np.testing.assert_allclose(out[idx], (T @ np.append(pts[idx], 1.0))[:3])
    with pytest.raises(ValueError, match="pts"):
        g.transform_points(T, np.zeros((4, 2)))


# ---- quaternions and rigid transforms ---------------------------------------------------

EDGE_ROTATIONS = [
    ([1, 0, 0], 0.0), ([1, 0, 0], np.pi), ([0, 1, 0], np.pi), ([0, 0, 1], np.pi),
    ([1, 1, 0], np.pi), ([1, -2, 3], np.pi - 1e-7), ([0, 0, 1], 1e-9), ([1, 1, 1], 2 * np.pi / 3),
]


@pytest.mark.parametrize("axis, angle", EDGE_ROTATIONS)
def test_quaternion_round_trip_edge_cases(axis, angle):
    R = rodrigues(axis, angle)
    q = g.quat_from_matrix(R)
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    expected = np.append(k * np.sin(angle / 2), np.cos(angle / 2))
    # q and -q are the same rotation; the function returns the one with w >= 0
    assert q[3] >= 0
    assert min(np.abs(q - expected).max(), np.abs(q + expected).max()) < 1e-7
    np.testing.assert_allclose(g.matrix_from_quat(q), R, atol=1e-9)


def test_quaternion_round_trip_random():
    rng = np.random.default_rng(1)
    for _ in range(200):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[3] >= 0 else -q
        R = g.matrix_from_quat(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(g.quat_from_matrix(R), q, atol=1e-9)


def test_matrix_from_quat_normalises_and_rejects_bad_quaternions():
    np.testing.assert_allclose(g.matrix_from_quat([0, 0, 0, 5.0]), np.eye(3))
    np.testing.assert_allclose(g.matrix_from_quat([0, 0, 2.0, 2.0]), rodrigues([0, 0, 1], np.pi / 2), atol=1e-12)
    with pytest.raises(ValueError, match="zero length"):
        g.matrix_from_quat([0, 0, 0, 0])
    with pytest.raises(ValueError, match="NaN"):
        g.matrix_from_quat([0, 0, np.nan, 1])
    with pytest.raises(ValueError, match="shape"):
        g.matrix_from_quat([0, 0, 1])


def test_quat_from_matrix_rejects_non_rotations():
    with pytest.raises(ValueError, match="not a rotation"):
        g.quat_from_matrix(np.diag([1.0, 1.0, -1.0]))  # a reflection
    with pytest.raises(ValueError, match="not a rotation"):
        g.quat_from_matrix(2.0 * np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        g.quat_from_matrix(np.full((3, 3), np.inf))


def test_make_transform_and_is_rigid():
    T = g.make_transform([1, 2, 3], [0, 0, np.sin(0.3), np.cos(0.3)])
    np.testing.assert_allclose(T[:3, :3], rodrigues([0, 0, 1], 0.6), atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [1, 2, 3])
    assert g.is_rigid(T)
    np.testing.assert_allclose(g.invert_transform(T) @ T, np.eye(4), atol=1e-12)
    scaled, sheared, bad_row, nan = T.copy(), T.copy(), T.copy(), T.copy()
    scaled[:3, :3] *= 1.01
    sheared[0, 1] += 0.1
    bad_row[3, 0] = 0.5
    nan[0, 3] = np.nan
    for M in (scaled, sheared, bad_row, nan, np.diag([1.0, 1.0, -1.0, 1.0]), np.eye(3)):
        assert not g.is_rigid(M)


# ---- boxes and IoU -------------------------------------------------------------------

@pytest.mark.parametrize("a, b, expected", [
    (([0, 0, 0], [1, 1, 1]), ([2, 2, 2], [3, 3, 3]), 0.0),  # disjoint
    (([0, 0, 0], [1, 1, 1]), ([1, 0, 0], [2, 1, 1]), 0.0),  # touching faces
    (([0, 0, 0], [4, 4, 4]), ([1, 1, 1], [3, 3, 3]), 8 / 64),  # nested
    (([0, 0, 0], [1, 2, 3]), ([0, 0, 0], [1, 2, 3]), 1.0),  # identical
    (([0, 0, 0], [1, 1, 1]), ([0.5, 0, 0], [1.5, 1, 1]), 0.5 / 1.5),  # half overlap
    (([0, 0, 0], [2, 2, 2]), ([1, 1, 1], [3, 3, 3]), 1 / 15),  # corner overlap: 1 / (8 + 8 - 1)
    (([0, 0, 0], [0, 1, 1]), ([0, 0, 0], [0, 1, 1]), 0.0),  # zero volume
])
def test_aabb_iou_hand_computed(a, b, expected):
    assert g.aabb_iou(*a, *b) == pytest.approx(expected)
    assert g.aabb_iou(*b, *a) == pytest.approx(expected)


def test_aabb_iou_rejects_inverted_box():
    with pytest.raises(ValueError, match="max must be >= box min"):
        g.aabb_iou([1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1])


def test_box_corners_and_edges():
    corners = g.box_corners([1, 2, 3], [0, 0, 0, 1], [2, 4, 6])
    expected = {(x, y, z) for x in (0, 2) for y in (0, 4) for z in (0, 6)}
    assert {tuple(c) for c in corners} == expected
    assert np.all(corners[:4, 2] == 0)  # corners 0-3: the bottom face
    edges = g.box_edges()
    assert edges.shape == (12, 2) and len({tuple(sorted(e)) for e in edges}) == 12
    assert np.all(np.bincount(edges.ravel(), minlength=8) == 3)
    lengths = sorted(np.linalg.norm(corners[i] - corners[j]) for i, j in edges)
    assert lengths == [2.0] * 4 + [4.0] * 4 + [6.0] * 4
    # a rotated box: corners relative to the centre turn with it
    q = g.quat_from_matrix(rodrigues([0, 0, 1], 0.4))
    turned = g.box_corners([1, 2, 3], q, [2, 4, 6])
    np.testing.assert_allclose(turned - [1, 2, 3], (corners - [1, 2, 3]) @ rodrigues([0, 0, 1], 0.4).T, atol=1e-12)


def test_aligned_box_to_world_inverts_the_alignment():
    A = g.rotation_z(np.deg2rad(-30))
    A[:3, 3] = [0.5, -2.0, 0.0]
    lo, hi = np.array([1.0, 0.0, 0.0]), np.array([3.0, 1.0, 0.8])
    center, quat, size = g.aligned_box_to_world(lo, hi, A)
    np.testing.assert_allclose(size, hi - lo)
    np.testing.assert_allclose(g.transform_points(A, center), (lo + hi) / 2, atol=1e-12)
    in_model = g.transform_points(A, g.box_corners(center, quat, size))
    np.testing.assert_allclose(in_model.min(axis=0), lo, atol=1e-12)
    np.testing.assert_allclose(in_model.max(axis=0), hi, atol=1e-12)
    with pytest.raises(ValueError, match="rigid"):
        g.aligned_box_to_world(lo, hi, np.diag([2.0, 1, 1, 1]))


# ---- alignment ---------------------------------------------------------------------------

def room_cloud(yaw_deg: float, seed: int = 3, views: int = 6):
    """World points of a rendered room (160x120 views along the camera path) and the room."""
    room = make_room(seed, yaw_deg=yaw_deg)
    K = default_intrinsics(160, 120)
    clouds = []
    for T in camera_path(room, views, seed):
        _, depth = render_rgbd(room, K, T, 160, 120)
        clouds.append(g.transform_points(T, g.unproject_depth(depth, K)).reshape(-1, 3))
    return np.concatenate(clouds), room


def angle_mod_90(deg: float) -> float:
    return (deg + 45.0) % 90.0 - 45.0


@pytest.mark.parametrize("yaw_deg", [23.0, -61.0, 0.0])
def test_alignment_recovers_room_yaw_and_boxes_return_to_world(yaw_deg):
    points, room = room_cloud(yaw_deg)
    A, info = g.estimate_alignment(points, return_info=True)
    assert g.is_rigid(A)
    assert info.walls_found and info.gravity_ok
    assert abs(angle_mod_90(info.yaw_deg - yaw_deg)) < 2.0
    # the room's walls are now parallel to the axes: its rotation in the model frame is a
    # multiple of 90 degrees about z
    R = A[:3, :3] @ room.world_from_room[:3, :3]
    yaw_model = np.degrees(np.arctan2(R[1, 0], R[0, 0]))
    assert abs(angle_mod_90(yaw_model)) < 2.0
    np.testing.assert_allclose(R[2], [0, 0, 1], atol=1e-9)
    # origin: x, y at the cloud centroid, z kept
    np.testing.assert_allclose(g.transform_points(A, points).mean(axis=0)[:2], [0, 0], atol=1e-6)
    assert A[2, 3] == 0.0
    # each furniture box, axis-aligned in the model frame, maps back onto its world box
    for label, center, quat, size in room.world_boxes():
        corners_model = g.transform_points(A, g.box_corners(center, quat, size))
        lo, hi = corners_model.min(axis=0), corners_model.max(axis=0)
        c2, q2, s2 = g.aligned_box_to_world(lo, hi, A)
        np.testing.assert_allclose(c2, center, atol=1e-9)
        back = g.box_corners(c2, q2, s2)
        # corners agree up to the 2-degree yaw residual (the AABB of a slightly turned box is larger)
        d = np.linalg.norm(back[:, None] - g.box_corners(center, quat, size)[None], axis=2).min(axis=1)
        assert d.max() < 0.06 * max(size), label


def test_alignment_on_a_sparse_cloud_picks_larger_cells():
    points, _ = room_cloud(-37.0)
    _, first = np.unique(np.floor(points / 0.05).astype(np.int64), axis=0, return_index=True)
    sparse = points[first]  # one point per 5 cm voxel, like a coarse map
    _, info = g.estimate_alignment(sparse, return_info=True)
    assert info.walls_found and abs(angle_mod_90(info.yaw_deg + 37.0)) < 2.0
    _, fixed = g.estimate_alignment(sparse, cell=0.1, return_info=True)
    assert not fixed.walls_found  # what a fixed 10 cm cell would have done


def test_camera_up_from_poses():
    room = make_room(0)
    poses = camera_path(room, 16)  # cameras pitched 10-20 degrees down, no roll
    up, spread = g.camera_up(poses)
    # the pitch varies along the loop (15 +- 5 degrees), so the tilts cancel only roughly
    assert np.degrees(np.arccos(up[2])) < 5.0
    assert 9.0 < spread < 25.0
    y_up = np.diag([1.0, 1.0, 1.0, 1.0])
    y_up[:3, :3] = rodrigues([1, 0, 0], -np.pi / 2)  # the same cameras in a world whose up is +y
    up_y, _ = g.camera_up(y_up @ poses)
    np.testing.assert_allclose(up_y, y_up[:3, :3] @ up, atol=1e-9)
    assert up_y[1] > 0.99
    with pytest.raises(ValueError, match="at least one pose"):
        g.camera_up(np.zeros((0, 4, 4)))


def test_alignment_reports_a_tilted_world(caplog):
    points, _ = room_cloud(15.0, views=4)
    tilt = g.make_transform([0, 0, 0], np.append(np.sin(np.deg2rad(5)) * np.array([1.0, 0, 0]),
                                                 np.cos(np.deg2rad(5))))  # 10 degrees about x
    with caplog.at_level(logging.WARNING, logger="gs_reasoner_ros.geometry"):
        _, info = g.estimate_alignment(g.transform_points(tilt, points), return_info=True)
    assert not info.gravity_ok
    assert info.gravity_error_deg == pytest.approx(10.0, abs=1.0)
    assert "not gravity-aligned" in info.message and "floor normal" in caplog.text
    _, level = g.estimate_alignment(points, return_info=True)
    assert level.gravity_ok and level.gravity_error_deg < 1.0


def test_alignment_with_another_up_axis():
    points, _ = room_cloud(23.0, views=4)
    y_up = points[:, [0, 2, 1]] * [1, 1, -1]  # world with y up (z up -> y, y -> -z): a proper rotation
    A, info = g.estimate_alignment(y_up, up=(0, 1, 0), return_info=True)
    assert info.gravity_ok
    np.testing.assert_allclose(A[:3, :3] @ [0, 1, 0], [0, 0, 1], atol=1e-9)


def test_alignment_without_walls_and_bad_input():
    rng = np.random.default_rng(0)
    floor_only = np.c_[rng.uniform(-2, 2, (5000, 2)), np.zeros(5000)]
    A, info = g.estimate_alignment(floor_only, return_info=True)
    assert not info.walls_found and info.yaw_deg == 0.0
    np.testing.assert_allclose(A[:3, :3], np.eye(3))
    with pytest.raises(ValueError, match="at least one finite point"):
        g.estimate_alignment(np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="shape"):
        g.estimate_alignment(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="up must be"):
        g.estimate_alignment(floor_only, up=(0, 0, 0))
