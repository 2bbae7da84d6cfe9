"""Intake without ROS: posed frames into the map, frames waiting for TF, the bounded inbox,
relocalisation (clear and re-anchor) and new timelines (stamps going back)."""
from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest

from gs_reasoner_ros import geometry
from gs_reasoner_ros.pipeline.health import Health, Reporter
from gs_reasoner_ros.pipeline.intake import Intake, RgbdFrame
from gs_reasoner_ros.pipeline.motion import MotionHistory, scaled_motion
from gs_reasoner_ros.pipeline.tf_tree import TfBuffer
from gs_reasoner_ros.scene_memory import KeyframeStore, make_voxel_map
from gs_reasoner_ros.synthetic import synthetic_scene

CAMERA = "camera"


def params(**overrides):
    p = dict(world_frame="map", tf_timeout_s=0.2, tf_pending_frames=8, intake_queue_size=4, map_stride=2,
             relocalization_jump_m=0.0, relocalization_jump_deg=0.0, relocalization_action="clear",
             time_jump_reset_s=1.0, time_jump_clear_map=True, max_depth_m=10.0)
    p.update(overrides)
    return SimpleNamespace(**p)


@pytest.fixture(scope="module")
def scene():
    scene, _ = synthetic_scene(seed=3, n_frames=6, width=80, height=60)
    return scene


def make_intake(**overrides):
    p = params(**overrides)
    tf = TfBuffer(10.0)
    intake = Intake(lambda: p, make_voxel_map(voxel_size=0.05), KeyframeStore(min_interval_s=0.0), tf,
                    Reporter(Health(), logging.getLogger("test_intake")), decode=lambda frame: frame,
                    now=time.time)
    return intake, tf, p


def rgbd(scene, i, stamp):
    return RgbdFrame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], stamp, CAMERA)


def pose_at(tf, pose, stamp):
    tf.set_transform_matrix("map", CAMERA, stamp, pose)


def test_a_posed_frame_is_fused_and_kept(scene):
    intake, tf, _ = make_intake()
    pose_at(tf, scene.poses[0], 10.0)
    intake.accept(rgbd(scene, 0, 10.0))
    assert len(intake.voxel_map) > 100 and len(intake.keyframes) == 1
    assert intake.newest_stamp == 10.0 and intake.version == 1
    assert intake.health.total("integrated") == 1


def test_a_frame_waits_for_its_pose_then_gives_up(scene):
    intake, tf, _ = make_intake(tf_timeout_s=0.1)
    intake.accept(rgbd(scene, 0, 5.0))  # no TF yet
    assert len(intake.voxel_map) == 0 and intake.health.snapshot()["tf_waiting"] == 1
    pose_at(tf, scene.poses[0], 5.0)
    intake.drain()
    assert len(intake.voxel_map) > 0  # came in time
    intake.accept(rgbd(scene, 1, 6.0))
    time.sleep(0.15)
    intake.drain()
    assert intake.health.total("tf_failures") == 1
    assert "no pose for camera at 6.000" in intake.health.snapshot()["last_tf_failure"]


def test_the_inbox_drops_the_oldest_beyond_its_size(scene):
    intake, tf, p = make_intake(intake_queue_size=2)
    decoded = []
    intake._decode = lambda synced: decoded.append(synced[0]) or rgbd(scene, 0, synced[1])
    intake._stop = False  # accepting without the thread: the test drains by hand
    for i in range(5):
        intake.submit((i, float(i)), float(i))
    assert intake.waiting == 2 and intake.health.total("intake_dropped") == 3


def test_the_thread_fuses_submitted_frames(scene):
    intake, tf, _ = make_intake()
    for i in range(3):
        pose_at(tf, scene.poses[i], 1.0 + i * 0.1)
    intake.start()
    try:
        for i in range(3):
            intake.submit(rgbd(scene, i, 1.0 + i * 0.1), 1.0 + i * 0.1)
        deadline = time.monotonic() + 5.0
        while intake.health.total("integrated") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        intake.stop()
    assert intake.health.total("integrated") == 3


# ---- relocalisation ---------------------------------------------------------------------

def shifted(pose, dx):
    out = pose.copy()
    out[0, 3] += dx
    return out


def test_a_pose_jump_clears_the_memory(scene):
    intake, tf, _ = make_intake(relocalization_jump_m=0.5)
    pose_at(tf, scene.poses[0], 1.0)
    intake.accept(rgbd(scene, 0, 1.0))
    before = len(intake.voxel_map)
    jumped = shifted(scene.poses[0], 2.0)
    pose_at(tf, jumped, 1.1)
    intake.accept(rgbd(scene, 0, 1.1))
    assert intake.health.total("relocalizations") == 1
    # the old map is gone; only the frame after the jump is in it (the same frame, moved by 2 m)
    pts = intake.voxel_map.points()
    assert 0 < len(pts) <= before
    assert len(intake.keyframes) == 1 and np.allclose(intake.keyframes.frames()[0].pose, jumped)


def test_normal_motion_is_not_a_relocalisation(scene):
    intake, tf, _ = make_intake(relocalization_jump_m=0.5, relocalization_jump_deg=45.0)
    for i in range(4):
        pose_at(tf, shifted(scene.poses[0], 0.05 * i), 1.0 + 0.1 * i)
        intake.accept(rgbd(scene, 0, 1.0 + 0.1 * i))
    assert intake.health.total("relocalizations") == 0


def test_reanchor_moves_the_map_by_the_correction(scene):
    intake, tf, _ = make_intake(relocalization_jump_m=0.5, relocalization_action="reanchor")
    pose_at(tf, scene.poses[0], 1.0)
    intake.accept(rgbd(scene, 0, 1.0))
    old = np.sort(intake.voxel_map.points()[:, 0])
    pose_at(tf, shifted(scene.poses[0], 3.0), 1.1)  # the camera stood still; world_frame moved 3 m
    intake.accept(rgbd(scene, 0, 1.1))
    new = np.sort(intake.voxel_map.points()[:, 0])
    assert intake.health.total("relocalizations") == 1
    assert len(new) == len(old)  # re-anchored and fused onto itself: no doubled walls
    assert abs(np.median(new) - np.median(old) - 3.0) < 0.05


def test_prediction_continues_the_last_motion():
    motion = MotionHistory()
    a = np.eye(4)
    b = geometry.rotation_z(np.radians(10.0))
    b[:3, 3] = [0.1, 0.0, 0.0]
    motion.add(0.0, a)
    motion.add(0.1, b)
    np.testing.assert_allclose(motion.predicted(0.2), b @ b, atol=1e-9)  # one more step of the same twist
    half = scaled_motion(b, 0.5)
    np.testing.assert_allclose((half @ half)[:3, :3], b[:3, :3], atol=1e-9)  # half the turn, twice
    np.testing.assert_allclose(motion.predicted(0.1), b, atol=1e-9)  # no time since the last frame


# ---- timelines ---------------------------------------------------------------------------

def test_stamps_going_back_start_a_new_timeline(scene):
    intake, tf = fused(scene, time_jump_reset_s=1.0)
    intake.observe_stamp("input", "color", 3.0)  # a bag looped: colour goes back first,
    assert intake.health.total("time_jump_resets") == 0  # which alone is not believed,
    intake.observe_stamp("input", "depth", 3.0)  # until depth agrees
    intake.observe_stamp("input", "camera_info", 3.0)  # the same jump once more: still one reset
    assert intake.health.total("time_jump_resets") == 1
    assert len(intake.voxel_map) == 0 and len(intake.keyframes) == 0
    assert not tf.can_transform("map", CAMERA, 100.0)  # the old timeline's TF is gone


def test_small_stamp_reorderings_are_not_jumps():
    intake, _, _ = make_intake(time_jump_reset_s=1.0)
    for t in (10.0, 10.2, 9.5, 10.4):
        intake.observe_stamp("input", "color", t)
    assert intake.health.total("time_jump_resets") == 0


def test_a_new_timeline_can_keep_the_map(scene):
    intake, tf, _ = make_intake(time_jump_clear_map=False)
    pose_at(tf, scene.poses[0], 50.0)
    intake.accept(rgbd(scene, 0, 50.0))
    n = len(intake.voxel_map)
    for name in ("color", "depth"):
        intake.observe_stamp("input", name, 50.0)
        intake.observe_stamp("input", name, 1.0)
    assert intake.health.total("time_jump_resets") == 1 and len(intake.voxel_map) == n
    assert len(intake.keyframes) == 1


def test_timeline_checks_can_be_off():
    intake, _, _ = make_intake(time_jump_reset_s=0.0)
    intake.observe_stamp("input", "color", 100.0)
    intake.observe_stamp("input", "color", 1.0)
    assert intake.health.total("time_jump_resets") == 0


# ---- one message must not wipe or poison the memory ----------------------------------------

def fused(scene, **overrides):
    intake, tf, p = make_intake(**overrides)
    for i, t in enumerate((100.0, 100.5)):
        for name in ("color", "depth", "camera_info"):
            intake.observe_stamp("input", name, t)
        pose_at(tf, scene.poses[i], t)
        intake.accept(rgbd(scene, i, t))
    assert len(intake.voxel_map) > 0
    return intake, tf


@pytest.mark.parametrize("stamp", [0.0, -5.0, float("nan"), 1e12])
def test_a_stamp_that_cannot_be_real_is_refused_and_wipes_nothing(scene, stamp):
    intake, tf = fused(scene)
    n = len(intake.voxel_map)
    assert not intake.observe_stamp("input", "camera_info", stamp)
    assert not intake.observe_stamp("tf", CAMERA, stamp)
    assert intake.health.total("invalid_stamps") == 2 and intake.health.total("time_jump_resets") == 0
    assert len(intake.voxel_map) == n
    intake.accept(rgbd(scene, 2, stamp))  # a whole frame stamped so is rejected, not fused
    assert len(intake.voxel_map) == n and intake.health.total("rejected") == 1


@pytest.mark.parametrize("alone", [("input", "camera_info"), ("tf", CAMERA), ("tf", "unrelated")])
def test_one_source_going_back_alone_wipes_nothing(scene, alone):
    intake, tf = fused(scene)
    for t in (100.0, 100.5):
        intake.observe_stamp("tf", CAMERA, t)
        intake.observe_stamp("tf", "unrelated", t)
    n = len(intake.voxel_map)
    assert intake.observe_stamp(*alone, 3.0)
    assert intake.health.total("time_jump_resets") == 0 and len(intake.voxel_map) == n


def test_an_unrelated_tf_edge_never_counts_towards_a_new_timeline(scene):
    intake, tf = fused(scene)
    for t in (100.0, 100.5):
        intake.observe_stamp("tf", "unrelated", t)
    intake.observe_stamp("tf", "unrelated", 3.0)
    intake.observe_stamp("input", "camera_info", 3.0)
    assert intake.health.total("time_jump_resets") == 0
    intake.observe_stamp("input", "depth", 3.0)  # a second camera input agrees: a real loop
    assert intake.health.total("time_jump_resets") == 1


def test_a_tiny_relocalisation_threshold_does_not_fire_on_normal_motion(scene):
    intake, tf, _ = make_intake(relocalization_jump_m=0.001, relocalization_jump_deg=0.01)
    for i in range(30):  # 3 cm and 0.5 degree steps at 10 Hz: a walking camera
        pose = shifted(scene.poses[0], 0.03 * i) @ geometry.rotation_z(np.radians(0.5 * i))
        pose_at(tf, pose, 1.0 + 0.1 * i)
        intake.accept(rgbd(scene, 0, 1.0 + 0.1 * i))
    assert intake.health.total("relocalizations") <= 5  # only before five steps say what normal is
    before = intake.health.total("relocalizations")
    pose_at(tf, shifted(scene.poses[0], 5.0), 4.0)  # a real jump still counts
    intake.accept(rgbd(scene, 0, 4.0))
    assert intake.health.total("relocalizations") == before + 1


def test_implausible_intrinsics_are_refused(scene):
    intake, tf = fused(scene)
    n = len(intake.voxel_map)
    for fx, cx in ((1e-6, 40.0), (1e9, 40.0), (60.0, -500.0)):
        f = rgbd(scene, 2, 100.7)
        f.k = f.k.copy()
        f.k[0, 0], f.k[0, 2] = fx, cx
        intake.accept(f)
    assert intake.health.total("rejected") == 3 and len(intake.voxel_map) == n


def test_depth_beyond_max_depth_never_becomes_a_point(scene):
    intake, tf, _ = make_intake(max_depth_m=10.0)
    f = rgbd(scene, 0, 10.0)
    f.depth = f.depth.copy()
    f.depth[:10] = 25_000.0
    f.depth[10:20] = 1e30
    pose_at(tf, scene.poses[0], 10.0)
    intake.accept(f)
    pts = intake.voxel_map.points()
    assert len(pts) > 0 and np.abs(pts - scene.poses[0][:3, 3]).max() < 10.0 * 1.8
    assert intake.keyframes.frames()[0].depth.max() <= 10.0


def test_an_oversized_frame_is_reduced_before_it_is_kept():
    intake, tf, _ = make_intake()
    depth = np.full((2048, 2048), 2.0, np.float32)
    k = np.array([[1500.0, 0, 1024.0], [0, 1500.0, 1024.0], [0, 0, 1]])
    pose_at(tf, np.eye(4), 10.0)
    intake.accept(RgbdFrame(np.zeros((2048, 2048, 3), np.uint8), depth, k, 10.0, CAMERA))
    kept = intake.keyframes.frames()[0]
    assert kept.depth.size <= 640 * 480 and kept.rgb.shape[:2] == kept.depth.shape
    assert kept.K[0, 0] == pytest.approx(1500.0 / 4)
    # the same wall at the same place: the reduced K describes the reduced image
    pts = intake.voxel_map.points()
    assert np.allclose(pts[:, 2], 2.0, atol=0.05) and abs(pts[:, 0].mean()) < 0.1


def test_a_pose_far_from_the_origin_is_refused(scene):
    intake, tf, _ = make_intake()
    pose_at(tf, shifted(scene.poses[0], 1e6), 10.0)
    intake.accept(rgbd(scene, 0, 10.0))
    assert len(intake.voxel_map) == 0 and intake.health.total("rejected") == 1


def test_each_fused_frame_reports_its_integration_time_and_lag(scene):
    intake, tf, _ = make_intake()
    stamp = time.time() - 0.25  # a camera stamping with this clock, its frame 250 ms old
    pose_at(tf, scene.poses[0], stamp)
    intake.accept(rgbd(scene, 0, stamp))
    snap = intake.health.snapshot()
    assert snap["integrate_ms_count"] == 1 and 0 < snap["integrate_ms_p50"] < 5000
    assert snap["fused_lag_ms_count"] == 1
    assert 250 <= snap["fused_lag_ms_p95"] < 250 + 5000
