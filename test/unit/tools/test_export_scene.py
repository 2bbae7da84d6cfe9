"""`gs-reasoner export-scene`: a small rosbag2 written here with rosbags from synthetic frames is
exported, and the processed-data folder reproduces the frames, poses and intrinsics."""
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
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
# camera_link -> optical: x right, y down, z forward from a z-up, x-forward body
OPTICAL = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
MOUNT = g.make_transform([0.1, 0.0, 0.3], [0, 0, 0, 1]) @ OPTICAL  # base_link -> camera optical frame


def header(stamp: float, frame: str):
    sec = int(np.floor(stamp))
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((stamp - sec) * 1e9))),
                                    frame_id=frame)


def transform(parent: str, child: str, stamp: float, M: np.ndarray):
    q = g.quat_from_matrix(M[:3, :3])
    return T["geometry_msgs/msg/TransformStamped"](
        header=header(stamp, parent), child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=M[0, 3], y=M[1, 3], z=M[2, 3]),
            rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))


def image(stamp: float, frame: str, array: np.ndarray, encoding: str):
    h, w = array.shape[:2]
    data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
    return T["sensor_msgs/msg/Image"](header=header(stamp, frame), height=h, width=w, encoding=encoding,
                                      is_bigendian=0, step=len(data) // h, data=data)


def camera_info(stamp: float, frame: str, K: np.ndarray, w: int, h: int):
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T["sensor_msgs/msg/CameraInfo"](header=header(stamp, frame), height=h, width=w, distortion_model="plumb_bob",
                                           d=np.zeros(5), k=K.reshape(-1), r=np.eye(3).reshape(-1),
                                           p=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def write_bag(path, scene: Scene, stamps, world="map", storage=StoragePlugin.MCAP, depth_encoding="16UC1",
              depth_delay=0.004, orphan_colour=True):
    """Colour at each stamp, depth `depth_delay` later, camera_info, and TF: world -> base_link
    sampled 50 ms either side of each image (so the pose at the image stamp is interpolated),
    base_link -> camera optical frame on /tf_static."""
    h, w = scene.depth.shape[1:]
    with Writer(path, version=9, storage_plugin=storage) as bag:
        conns = {topic: bag.add_connection(topic, msgtype, typestore=TS) for topic, msgtype in [
            ("/color/image", "sensor_msgs/msg/Image"), ("/depth/image", "sensor_msgs/msg/Image"),
            ("/color/camera_info", "sensor_msgs/msg/CameraInfo"), ("/tf", "tf2_msgs/msg/TFMessage"),
            ("/tf_static", "tf2_msgs/msg/TFMessage")]}

        def put(topic, stamp, msg):
            bag.write(conns[topic], int(stamp * 1e9), TS.serialize_cdr(msg, msg.__msgtype__))

        put("/tf_static", stamps[0] - 1.0, T["tf2_msgs/msg/TFMessage"](
            transforms=[transform("base_link", "camera_optical", 0.0, MOUNT)]))
        for i, t in enumerate(stamps):
            base = scene.poses[i] @ g.invert_transform(MOUNT)
            for dt, shift in ((-0.05, -0.02), (0.05, 0.02)):  # linear motion through the true pose
                moved = base.copy()
                moved[:3, 3] += shift
                put("/tf", t + dt, T["tf2_msgs/msg/TFMessage"](transforms=[transform(world, "base_link", t + dt, moved)]))
            depth = scene.depth[i]
            depth = np.round(depth * 1000).astype("<u2") if depth_encoding == "16UC1" else depth.astype("<f4")
            put("/color/camera_info", t, camera_info(t, "camera_optical", scene.intrinsics[i], w, h))
            put("/color/image", t, image(t, "camera_optical", scene.rgb[i], "rgb8"))
            put("/depth/image", t + depth_delay, image(t + depth_delay, "camera_optical", depth, depth_encoding))
        if orphan_colour:  # a colour image whose depth never came: skipped
            put("/color/image", stamps[-1] + 0.3, image(stamps[-1] + 0.3, "camera_optical", scene.rgb[0], "rgb8"))
    return path


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
    bag = write_bag(tmp_path / "bag", frames, stamps, world="odom", storage=StoragePlugin.SQLITE3,
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
