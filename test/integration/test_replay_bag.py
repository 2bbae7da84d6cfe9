"""`gs-reasoner replay` of rosbag2 files written from the five real 3DMatch frames (raw and
compressed, sqlite3 and mcap) into a reasoner_node started from the console entry in the
namespace /robot1 (`--ros-args -r __ns:=/robot1`) with two cameras (the plain raw one and a
compressed one, `packed`): each replay gives the map the direct replay (ScenePlayer) gives, within
1 % in point count and coverage. Bags a node cannot use are refused with a clear error, and the
node stays up."""
import os
import subprocess
import sys

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rosbags", reason="rosbags writes and reads the bags")

from gs_reasoner_ros import geometry  # noqa: E402
from gs_reasoner_ros.ros import conversions, harness  # noqa: E402
from gs_reasoner_ros.scene import load_3dmatch  # noqa: E402
from gs_reasoner_ros.tools import cli, replay  # noqa: E402
from gs_reasoner_ros.tools.scene_bag import write_bag  # noqa: E402

VOXEL = 0.02
NODE = "/robot1/gs_reasoner"
STAMPS = 100.0 + 0.5 * np.arange(5)
PACKED = ["--remap", "/color:=/robot1/packed/color", "--remap", "/depth:=/robot1/packed/depth", "--node", NODE]


@pytest.fixture(scope="module")
def scene(rgbd_3dmatch):
    return load_3dmatch(rgbd_3dmatch)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("node") / "node.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gs_reasoner_ros.ros.process", "--ros-args", "-r", "__ns:=/robot1",
         "-p", "cameras:=['', 'packed']", "-p", "camera_transports:=['raw', 'compressed']",
         "-p", f"voxel_size:={VOXEL}", "-p", "map_stride:=1", "-p", "map_publish_period_s:=0.2",
         "-p", "diagnostics_period_s:=0.1", "-p", "tf_timeout_s:=2.0", "-p", "time_jump_reset_s:=0.0",
         "-p", "keyframe_min_interval_s:=0.0", "-p", "max_voxels:=2000000", "-p", "num_frames:=2"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    probe = harness.Probe(target=NODE, alive=lambda: proc.poll() is None)
    assert probe.spin_until(probe.services_ready, 60.0), log_path.read_text()[-3000:]
    yield proc, probe, log_path
    probe.close()
    harness.stop_process(proc)
    log.close()


def fresh_map(probe):
    assert probe.call("clear").success
    probe.clouds.clear()


def map_at(probe, stamp, log_path):
    cloud = probe.cloud_at(stamp, 30.0)
    assert cloud is not None, log_path.read_text()[-3000:]
    return conversions.cloud_to_arrays(cloud)[0]


@pytest.fixture(scope="module")
def direct_map(node, scene):
    _, probe, log_path = node
    fresh_map(probe)
    assert probe.player.wait_for_subscribers(20.0)
    for i, t in enumerate(STAMPS):
        probe.player.publish_frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], t)
        probe.spin_until(lambda i=i: probe.diag_value("integrated_total") >= i + 1, 5.0)
    return map_at(probe, STAMPS[-1], log_path)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("storage, transport, how", [
    ("mcap", "raw", "fast"), ("sqlite3", "raw", "cli"), ("mcap", "compressed", "fast"), ("sqlite3", "compressed", "fast"),
])
def test_bag_replay_gives_the_direct_replay_s_map(node, scene, direct_map, tmp_path, storage, transport, how):
    proc, probe, log_path = node
    bag = write_bag(tmp_path / "bag", scene, STAMPS, storage=storage, transport=transport, depth_delay=0.0,
                    orphan_colour=False)
    fresh_map(probe)
    where = PACKED if transport == "compressed" else ["--namespace", "/robot1"]
    if how == "cli":  # the console path, at 4x the recorded speed, in a process of its own
        out = subprocess.run([sys.executable, "-m", "gs_reasoner_ros.tools.cli", "replay", str(bag), "--rate", "4",
                              *where], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr + out.stdout
        assert "played" in out.stdout
    else:
        args = cli.build_parser().parse_args(["replay", str(bag), "--fast", *where])
        assert replay.run(args) == 0
    bag_map = map_at(probe, STAMPS[-1], log_path)
    grown = len(bag_map) / len(direct_map) - 1
    covered = geometry.fraction_near(direct_map, bag_map, VOXEL, 1)
    extra = 1 - geometry.fraction_near(bag_map, direct_map, VOXEL, 1)
    print(f"{storage} {transport}: {len(bag_map)} points ({grown:+.2%} vs direct {len(direct_map)}), "
          f"covers {covered:.2%} of the direct map, {extra:.2%} elsewhere")
    assert abs(grown) < 0.01 and covered >= 0.99 and extra <= 0.01
    assert proc.poll() is None


def test_unusable_bags_are_refused_clearly_and_the_node_stays_up(node, scene, tmp_path, capsys):
    proc, probe, _ = node
    cases = {"no depth image topic": dict(topics=("color", "info")), "no TF": dict(tf=False),
             "no CameraInfo topic": dict(topics=("color", "depth"))}
    for i, (error, kwargs) in enumerate(cases.items()):
        bag = write_bag(tmp_path / f"bag{i}", scene, STAMPS[:2], **kwargs)
        assert cli.main(["replay", str(bag), "--namespace", "/robot1", "--wait", "2"]) == 1
        assert error in capsys.readouterr().err
    assert cli.main(["replay", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    bag = write_bag(tmp_path / "elsewhere", scene, STAMPS[:2])  # nobody in /robot9 subscribes
    assert cli.main(["replay", str(bag), "--namespace", "/robot9", "--wait", "1"]) == 1
    assert "nothing subscribes" in capsys.readouterr().err
    assert proc.poll() is None and probe.call("ground", description="the chair", max_new_tokens=4).success
