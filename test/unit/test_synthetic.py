"""The procedural room and its ray-cast renderer, checked against analytic distances."""
from __future__ import annotations

import numpy as np
import pytest

from gs_reasoner_ros import geometry as g
from gs_reasoner_ros.synthetic import (CATALOGUE, Room, camera_path, default_intrinsics, look_at, make_room,
                                       render_rgbd, synthetic_scene)

W, H = 64, 48
K = np.array([[50.0, 0, 32.0], [0, 50.0, 24.0], [0, 0, 1]])


def empty_room(yaw_deg=0.0, offset=(0.0, 0.0, 0.0)) -> Room:
    return Room(np.array([5.0, 4.0, 2.6]), [], [], np.deg2rad(yaw_deg), np.asarray(offset, float))


@pytest.mark.parametrize("yaw_deg, offset", [(0.0, (0, 0, 0)), (37.0, (1.0, -2.0, 0.5))])
def test_depth_equals_analytic_distance_to_wall_and_floor(yaw_deg, offset):
    room = empty_room(yaw_deg, offset)
    W_r = room.world_from_room
    cam = np.array([0.5, 0.3, 1.5])  # room frame; the +x wall is 2.0 m ahead
    pose = W_r @ look_at(cam, cam + [1, 0, 0])
    rgb, depth = render_rgbd(room, K, pose, W, H)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8 and depth.dtype == np.float32
    v, u = np.mgrid[0:H, 0:W]
    # Along the optical axis the wall is perpendicular: every pixel on it has depth 2.0.
    ray_y, ray_x = (v - K[1, 2]) / K[1, 1], (u - K[0, 2]) / K[0, 0]
    floor_t = np.where(ray_y > 0, 1.5 / np.where(ray_y > 0, ray_y, 1), np.inf)  # y down: floor 1.5 m below
    ceiling_t = np.where(ray_y < 0, 1.1 / np.where(ray_y < 0, -ray_y, 1), np.inf)
    right_t = np.where(ray_x > 0, 2.3 / np.where(ray_x > 0, ray_x, 1), np.inf)  # camera right is -y
    left_t = np.where(ray_x < 0, 1.7 / np.where(ray_x < 0, -ray_x, 1), np.inf)
    expected = np.minimum.reduce([np.full((H, W), 2.0), floor_t, ceiling_t, right_t, left_t])
    np.testing.assert_allclose(depth, expected, rtol=1e-5)
    assert np.sum(expected == 2.0) > W * H // 4  # the wall fills a good part of the view


def test_box_face_depth_and_colour():
    room = empty_room()
    room.objects = [("cabinet", np.array([1.0, -0.5, 0.0]), np.array([1.6, 0.5, 2.0]))]
    room.colors = [np.array([200, 100, 50], np.uint8)]
    cam = np.array([-1.0, 0.0, 1.2])
    rgb, depth = render_rgbd(room, K, look_at(cam, cam + [1, 0, 0]), W, H)
    assert depth[24, 32] == pytest.approx(2.0, abs=1e-5)  # front face at x = 1.0, camera at -1.0
    # the front face is the x face, shaded by 0.8 (see _shade)
    np.testing.assert_allclose(rgb[24, 32], np.array([200, 100, 50]) * 0.8, atol=1)
    # beside the box (u = 0 looks 32 px / 50 px to the left), the ray reaches the +x wall region
    assert depth[24, 0] > 2.0


def test_make_room_is_seeded_and_well_formed():
    for seed in range(12):
        room = make_room(seed)
        assert 4.0 <= room.size[0] <= 6.0 and 3.0 <= room.size[1] <= 5.0 and room.size[2] == 2.6
        assert 4 <= len(room.objects) <= 8 and len(room.colors) == len(room.objects)
        labels = [label for label, _, _ in room.objects]
        assert len(set(labels)) == len(labels) and set(labels) <= set(CATALOGUE)
        lo_room, hi_room = room.bounds()
        for i, (label, lo, hi) in enumerate(room.objects):
            assert np.all(lo >= lo_room - 1e-9) and np.all(hi <= hi_room + 1e-9), label
            along, depth, height = CATALOGUE[label][:3]
            assert height[0] <= hi[2] - lo[2] <= height[1]
            assert sorted(hi[:2] - lo[:2]) == pytest.approx(sorted([hi[0] - lo[0], hi[1] - lo[1]]))
            for _, lo2, hi2 in room.objects[i + 1:]:  # footprints keep 10 cm apart
                assert np.any(lo[:2] > hi2[:2] + 0.1 - 1e-9) or np.any(hi[:2] < lo2[:2] - 0.1 + 1e-9)
    a, b, c = make_room(5), make_room(5), make_room(6)
    assert [o[0] for o in a.objects] == [o[0] for o in b.objects]
    np.testing.assert_array_equal(a.objects[0][1], b.objects[0][1])
    assert not np.allclose(a.size, c.size)


def test_world_boxes_follow_the_room_rotation():
    room = make_room(2, yaw_deg=30.0, offset=(1.0, 2.0, 0.0))
    for (label, lo, hi), (label2, center, quat, size) in zip(room.objects, room.world_boxes()):
        assert label == label2
        np.testing.assert_allclose(size, hi - lo)
        np.testing.assert_allclose(center, g.transform_points(room.world_from_room, (lo + hi) / 2))
        np.testing.assert_allclose(g.matrix_from_quat(quat), g.rotation_z(np.deg2rad(30))[:3, :3], atol=1e-12)


def test_camera_path_poses_look_into_the_room():
    room = make_room(1, yaw_deg=20.0)
    poses = camera_path(room, 12, seed=1)
    assert poses.shape == (12, 4, 4)
    to_room = g.invert_transform(room.world_from_room)
    lo, hi = room.bounds()
    for T in poses:
        assert g.is_rigid(T)
        p = g.transform_points(to_room, T[:3, 3])
        assert np.all(p > lo + 0.5) and np.all(p < hi - 0.5)
        assert abs(p[2] - 1.5) < 0.1
        assert abs(T[2, 0]) < 1e-9  # camera x (right) stays horizontal: no roll
        pitch_down = np.degrees(np.arcsin(-T[2, 2]))  # optical z is forward
        assert 9.0 < pitch_down < 21.0
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 3 * np.median(steps)  # one smooth loop, no jumps


def test_synthetic_scene_shapes_and_renderer_consistency():
    scene, room = synthetic_scene(seed=4, n_frames=3, width=W, height=H, yaw_deg=10.0)
    assert len(scene) == 3 and scene.rgb.shape == (3, H, W, 3) and scene.depth.shape == (3, H, W)
    np.testing.assert_allclose(scene.stamps, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(scene.intrinsics[0], default_intrinsics(W, H))
    assert np.all(scene.depth > 0) and np.all(np.isfinite(scene.depth))
    # every unprojected point lies inside the room (on a wall, floor, ceiling or a box)
    lo, hi = room.bounds()
    to_room = g.invert_transform(room.world_from_room)
    for i in range(3):
        pts = g.transform_points(to_room @ scene.poses[i], g.unproject_depth(scene.depth[i], scene.intrinsics[i]))
        assert np.all(pts.reshape(-1, 3) > lo - 1e-3) and np.all(pts.reshape(-1, 3) < hi + 1e-3)


def test_render_rejects_bad_input():
    room = empty_room()
    inside = look_at([0, 0, 1.5], [1, 0, 1.5])
    with pytest.raises(ValueError, match="outside the room"):
        render_rgbd(room, K, look_at([9, 0, 1.5], [10, 0, 1.5]), W, H)
    with pytest.raises(ValueError, match="focal"):
        render_rgbd(room, np.zeros((3, 3)), inside, W, H)
    with pytest.raises(ValueError, match="rigid"):
        render_rgbd(room, K, 2 * inside, W, H)
    with pytest.raises(ValueError, match="n must be positive"):
        camera_path(room, 0)
