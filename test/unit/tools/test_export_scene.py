"""`gs-reasoner export-scene`: a small rosbag2 written with rosbags (tools/scene_bag.py) from
synthetic frames is exported, raw or compressed, and the processed-data folder reproduces the
frames, poses and intrinsics."""
from __future__ import annotations

import numpy as np
import pytest

from gs_reasoner_ros.tools import cli
from gs_reasoner_ros import geometry as g
from gs_reasoner_ros.tools.export_scene import export_scene
from gs_reasoner_ros.scene import Scene
from gs_reasoner_ros.scene_memory import Frame, KeyframeStore
from gs_reasoner_ros.synthetic import synthetic_scene

rosbags = pytest.importorskip("rosbags", reason="rosbags is needed to write test bags")
from gs_reasoner_ros.tools.scene_bag import write_bag  # noqa: E402


@pytest.fixture(scope="module")
def frames():
    scene, _ = synthetic_scene(seed=1, n_frames=6, width=64, height=48)
    return scene


def assert_reproduces(exported: Scene, scene: Scene, indices):
    np.testing.assert_allclose(exported.poses, scene.poses[indices], atol=1e-6)
    np.testing.assert_allclose(exported.intrinsics, scene.intrinsics[indices], atol=1e-9)
    np.testing.assert_allclose(exported.depth, scene.depth[indices], atol=0.0006)  # millimetre PNGs
    diff = np.abs(exported.rgb.astype(int) - scene.rgb[indices].astype(int))
    assert diff.mean() < 3.0  # JPEG


def test_export_bag_reproduces_frames(tmp_path, frames):
    stamps = 100.0 + 0.7 * np.arange(len(frames))
    bag = write_bag(tmp_path / "bag", frames, stamps)
    result = export_scene(bag, tmp_path / "out", frames=32, all_frames=True)
    assert result.written == result.candidates == 6
    assert result.skipped == {"colour without a depth image within the slop": 1}
    exported = Scene.load(tmp_path / "out")
    assert_reproduces(exported, frames, np.arange(6))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["color", "depth", "intrinsic", "pose"]


def test_export_applies_the_keyframe_policy_and_frame_count(tmp_path, frames):
    stamps = 50.0 + 0.3 * np.arange(len(frames))  # 0.3 s apart: the 0.5 s minimum interval drops some
    mcap = next((write_bag(tmp_path / "bag", frames, stamps, depth_encoding="32FC1")).glob("*.mcap"))
    reference = KeyframeStore(max_keyframes=100)
    kept = [i for i in range(len(frames)) if reference.offer(
        Frame(frames.rgb[i], frames.depth[i], frames.intrinsics[i], frames.poses[i], stamps[i]))]
    assert 1 < len(kept) < len(frames)
    result = export_scene(mcap, tmp_path / "all.npz")  # a bare .mcap file, written as .npz
    assert result.keyframes == len(kept)
    exported = Scene.load(tmp_path / "all.npz")
    np.testing.assert_allclose(exported.stamps, stamps[kept], atol=1e-6)
    np.testing.assert_allclose(exported.poses, frames.poses[kept], atol=1e-6)
    np.testing.assert_allclose(exported.depth, frames.depth[kept], atol=1e-6)  # 32FC1: exact
    two = export_scene(mcap, tmp_path / "two", frames=2)
    assert two.written == 2
    np.testing.assert_allclose(Scene.load(tmp_path / "two").poses, frames.poses[[kept[0], kept[-1]]], atol=1e-6)


def test_export_sqlite_bag_without_map_frame(tmp_path, frames):
    stamps = 10.0 + 0.7 * np.arange(3)
    bag = write_bag(tmp_path / "bag", frames, stamps, world="odom", storage="sqlite3",
                    orphan_colour=False)
    result = export_scene(bag, tmp_path / "out", all_frames=True)
    assert any("'odom'" in n for n in result.notes)
    assert_reproduces(Scene.load(tmp_path / "out"), frames, np.arange(3))


def test_export_scene_source_through_the_cli(tmp_path, frames, capsys):
    frames.save_npz(tmp_path / "scene.npz")
    code = cli.main(["export-scene", str(tmp_path / "scene.npz"), str(tmp_path / "out"), "--all-frames",
                     "--frames", "4", "--align"])
    assert code == 0
    assert "wrote 4 keyframes" in capsys.readouterr().out
    exported = Scene.load(tmp_path / "out")
    idx = np.linspace(0, 5, 4).astype(int)
    assert_reproduces(exported, frames, idx)
    assert g.is_rigid(exported.axis_align) and not np.allclose(exported.axis_align, np.eye(4))
    # a second export into the same folder is refused unless forced
    assert cli.main(["export-scene", str(tmp_path / "scene.npz"), str(tmp_path / "out")]) == 1
    assert "already holds frames" in capsys.readouterr().err


def test_export_errors_name_the_problem(tmp_path, frames):
    bag = write_bag(tmp_path / "bag", frames, 1.0 + 0.7 * np.arange(2))
    with pytest.raises(ValueError, match="/nope is not in the bag.*?/depth/image"):
        export_scene(bag, tmp_path / "o1", topics={"color": "/nope"})
    with pytest.raises(ValueError, match="carries sensor_msgs/msg/CameraInfo"):
        export_scene(bag, tmp_path / "o2", topics={"depth": "/color/camera_info"})
    with pytest.raises(ValueError, match="world-frame 'earth'"):
        export_scene(bag, tmp_path / "o3", world_frame="earth")
    with pytest.raises(ValueError, match="no synced colour"):
        export_scene(bag, tmp_path / "o4", slop=0.001)  # depth comes 4 ms after colour
    with pytest.raises(FileNotFoundError):
        export_scene(tmp_path / "missing", tmp_path / "o5")
    with pytest.raises(ValueError, match="frames must be positive"):
        export_scene(bag, tmp_path / "o6", frames=0)


@pytest.mark.parametrize("depth_encoding", ["16UC1", "32FC1"])
def test_export_reads_compressed_topics(tmp_path, frames, depth_encoding):
    """JPEG colour on /color/image/compressed and compressedDepth PNG on /depth/image/compressedDepth,
    found without naming them; 16UC1 is lossless (millimetres), 32FC1 within its quantisation."""
    stamps = 100.0 + 0.7 * np.arange(len(frames))
    bag = write_bag(tmp_path / "bag", frames, stamps, transport="compressed", depth_encoding=depth_encoding)
    result = export_scene(bag, tmp_path / "out.npz", all_frames=True)
    assert result.written == 6
    exported = Scene.load(tmp_path / "out.npz")
    np.testing.assert_allclose(exported.poses, frames.poses, atol=1e-6)
    # millimetres for 16UC1; 32FC1's inverse-depth quantisation errs by less than d^2 / A (A = 10100)
    bound = 0.0006 if depth_encoding == "16UC1" else frames.depth ** 2 / 10100.0 + 1e-5
    assert np.all(np.abs(exported.depth - frames.depth) <= bound)
    assert np.abs(exported.rgb.astype(int) - frames.rgb.astype(int)).mean() < 3.0


def test_replay_checks_bags_before_playing(tmp_path, frames):
    """`gs-reasoner replay`'s bag checks and topic remaps (ROS-free; playing is tested in
    test/integration/test_replay_bag.py)."""
    from gs_reasoner_ros.tools import replay

    remaps = replay.parse_remaps(["/color:=/robot1/packed/color"], "/robot1")
    assert replay.remapped("/color/image/compressed", remaps) == "/robot1/packed/color/image/compressed"
    assert replay.remapped("/depth/image", remaps) == "/robot1/depth/image"
    assert replay.remapped("/colors/image", remaps) == "/robot1/colors/image"  # a namespace, not a string prefix
    assert replay.remapped("/tf_static", remaps) == "/tf_static"
    with pytest.raises(ValueError, match="expected /OLD:=/NEW"):
        replay.parse_remaps(["color:=/x"])
    stamps = 1.0 + 0.5 * np.arange(3)
    plan = replay.read_plan(write_bag(tmp_path / "ok", frames, stamps, storage="sqlite3", transport="compressed"), [])
    assert plan.frames == 3 and plan.topics["/depth/image/compressedDepth"] == "/depth/image/compressedDepth"
    with pytest.raises(ValueError, match="no TF"):
        replay.read_plan(write_bag(tmp_path / "no_tf", frames, stamps, tf=False), [])
    with pytest.raises(ValueError, match="no depth image topic"):
        replay.read_plan(write_bag(tmp_path / "no_depth", frames, stamps, topics=("color", "info")), [])
