"""Several cameras into one map, compressed inputs, bad camera configurations, and two nodes in
two namespaces on one DDS domain (in-process nodes with an injected reasoner)."""
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import CompressedImage  # noqa: E402

from gs_reasoner_ros import geometry  # noqa: E402
from gs_reasoner_ros.reasoning import Answer  # noqa: E402
from gs_reasoner_ros.ros import conversions  # noqa: E402
from gs_reasoner_ros.ros.harness import InProcessNode  # noqa: E402
from gs_reasoner_ros.ros.replay import CAMERA_QOS, ScenePlayer  # noqa: E402
from gs_reasoner_ros.synthetic import camera_path, default_intrinsics, make_room, render_rgbd  # noqa: E402

W, H, VOXEL = 160, 120, 0.03
FAST = dict(voxel_size=VOXEL, map_stride=1, map_publish_period_s=0.2, diagnostics_period_s=0.2, tf_timeout_s=1.0,
            keyframe_min_interval_s=0.0, keyframe_min_translation_m=0.05, num_frames=8, max_voxels=200000,
            intake_queue_size=16, tf_pending_frames=16)


class Recorder:
    """Fake reasoner: remembers the frame ids of each scene it was asked about."""

    untrained = True

    def __init__(self):
        self.scenes = []

    def answer(self, scene, question, options=(), task="spatial", max_new_tokens=None):
        self.scenes.append(scene)
        return Answer(answer="ok", text="", objects=[], keyframes_used=len(scene))


def render(room, poses):
    K = default_intrinsics(W, H)
    frames = [render_rgbd(room, K, T, W, H) for T in poses]
    return [f[0] for f in frames], [f[1] for f in frames], K


def surface(depths, K, poses):
    pts = [geometry.transform_points(T, geometry.unproject_depth(d, K).reshape(-1, 3)) for d, T in zip(depths, poses)]
    pts = np.concatenate(pts)
    return pts[np.all(np.isfinite(pts), 1)]


def keyframe_cloud(frames):
    return surface([f.depth for f in frames], frames[0].K, [f.pose for f in frames])


@pytest.fixture(scope="module")
def two_cameras():
    """A head camera (raw) and a wrist camera (compressed: JPEG + 32FC1 compressedDepth) looking at
    one room from different heights and paths, played interleaved."""
    room = make_room(seed=4)
    views = {"head": camera_path(room, 4, seed=1, height=1.6), "wrist": camera_path(room, 4, seed=2, height=0.8)}
    recorder = Recorder()
    h = InProcessNode(dict(FAST, cameras=["head", "wrist"], camera_transports=["raw", "compressed"]),
                      lambda p: recorder)
    players = {"head": ScenePlayer(h.client, camera_frame="head_optical", prefix="head"),
               "wrist": ScenePlayer(h.client, camera_frame="wrist_optical", prefix="wrist", transport="compressed",
                                    depth_encoding="32FC1")}
    assert all(p.wait_for_subscribers(10.0) for p in players.values())
    data = {name: render(room, poses) for name, poses in views.items()}
    t0 = h.client.get_clock().now().nanoseconds * 1e-9
    for i in range(4):
        for j, (name, player) in enumerate(players.items()):
            rgb, depth, K = data[name]
            player.publish_frame(rgb[i], depth[i], K, views[name][i], t0 + 0.2 * i + 0.05 * j)
    assert h.wait_for(lambda: h.node.health.total("integrated") >= 8, 20.0), h.node.health.snapshot()
    yield h, recorder, views, data
    h.close()


def test_two_cameras_fuse_into_one_map_that_covers_both_views(two_cameras):
    h, _, views, data = two_cameras
    assert h.probe.spin_until(lambda: h.probe.clouds and len(conversions.cloud_to_arrays(h.probe.clouds[-1])[0])
                              >= len(h.node.voxel_map), 10.0)
    cloud, _ = conversions.cloud_to_arrays(h.probe.clouds[-1])
    for name in views:
        _, depths, K = data[name]
        covered = geometry.fraction_near(surface(depths, K, views[name]), cloud, VOXEL, 2)
        assert covered >= 0.9, f"{name}: only {covered:.1%} of its surface is in the map"
    snap = h.node.health.snapshot()
    assert snap["head/synced_total"] == 4 and snap["wrist/synced_total"] == 4 and snap["synced_total"] == 8


def depth_gaps(points, frame):
    """For world points that project into `frame`'s depth image where its surface faces the camera
    (depth changes by < 1 cm to the next pixel, so rounding to a pixel costs < 1 cm): the measured
    depth along the ray minus the point's depth (0 where they coincide)."""
    cam = geometry.transform_points(geometry.invert_transform(frame.pose), points)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(frame.K[0, 0] * cam[:, 0] / z + frame.K[0, 2]).astype(int)
        v = np.round(frame.K[1, 1] * cam[:, 1] / z + frame.K[1, 2]).astype(int)
    h, w = frame.depth.shape
    inside = (z > 0.1) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    d = frame.depth
    steep = np.zeros_like(d, dtype=bool)
    steep[:, :-1] |= np.abs(np.diff(d, axis=1)) > 0.01
    steep[:-1] |= np.abs(np.diff(d, axis=0)) > 0.01
    vi, ui = v[inside], u[inside]
    measured = d[vi, ui]
    return (measured - z[inside])[(measured > 0) & ~steep[vi, ui]]


def test_points_seen_by_both_cameras_coincide(two_cameras):
    """Each camera's keyframes (decoded by the node, posed by TF in its own optical frame) put the
    surfaces both saw in the same place: every wrist point that a head keyframe also measured
    (its depth along the head's ray within 10 cm: not hidden behind something) lies within 3 cm of
    the head's measurement."""
    h, _, _, _ = two_cameras
    frames = h.node.keyframes.frames()
    assert {f.camera for f in frames} == {"head", "wrist"}
    wrist = keyframe_cloud([f for f in frames if f.camera == "wrist"])
    gaps = np.concatenate([depth_gaps(wrist, f) for f in frames if f.camera == "head"])
    both = np.abs(gaps[np.abs(gaps) < 0.10])
    assert len(both) > 1000, "the two views hardly overlap: the test scene is wrong"
    print(f"{len(both)} points seen by both: depth gap median {np.median(both) * 1000:.1f} mm, "
          f"95th percentile {np.percentile(both, 95) * 1000:.1f} mm")
    assert np.percentile(both, 95) < 0.03 and np.mean(both < 0.03) >= 0.95


def test_a_question_uses_keyframes_of_both_cameras(two_cameras):
    h, recorder, _, _ = two_cameras
    resp = h.call("ask", question="How many chairs are there?")
    assert resp.success, resp.message
    ids = set(recorder.scenes[-1].frame_ids)
    used = {f.camera for f in h.node.keyframes.frames() if h.node.keyframes.frame_id(f) in ids}
    assert used == {"head", "wrist"} and resp.keyframes_used == len(ids)


def test_a_corrupt_compressed_frame_is_refused_counted_and_the_node_goes_on(two_cameras):
    h, _, views, data = two_cameras
    before = h.node.health.total("rejected")
    wrist = ScenePlayer(h.client, camera_frame="wrist_optical", prefix="wrist", transport="compressed")
    rgb, depth, K = data["wrist"]
    t = h.client.get_clock().now().nanoseconds * 1e-9
    good = wrist.depth_msg(depth[0], t)
    wrist.publish_pose(views["wrist"][0], t)
    wrist.info.publish(conversions.make_camera_info(K, W, H, t, "wrist_optical"))
    wrist.color.publish(wrist.color_msg(rgb[0], t))
    wrist.depth.publish(CompressedImage(header=good.header, format=good.format, data=bytes(good.data)[:200]))
    assert h.wait_for(lambda: h.node.health.total("rejected") > before, 10.0)
    assert "compressedDepth" in h.node.health.snapshot()["last_rejection"] or \
        "truncated" in h.node.health.snapshot()["last_rejection"]
    assert h.call("ask", question="Still there?").success


@pytest.mark.parametrize("overrides, error", [
    (dict(cameras=["head", "wrist"], camera_transports=["raw"]), "give one transport per camera"),
    (dict(cameras=["head", "/refused/head"], camera_transports=["raw", "raw"]), "both read /refused/head/color/image"),
    (dict(cameras=["a", "b", "c", "d", "e"], camera_transports=["raw"] * 5), "between 1 and 4"),
    (dict(cameras=["bad prefix"]), "not a valid topic namespace"),
])
def test_bad_camera_configurations_are_refused_and_the_node_stays_up(overrides, error):
    h = InProcessNode(overrides, lambda p: Recorder(), namespace="/refused", expect_active=False)  # not the module's node
    try:
        assert h.node.state == "unconfigured"
        resp = h.call("ask", question="hello?")
        assert not resp.success and error in resp.message and "bad parameters" in resp.message
    finally:
        h.close()


def test_two_namespaced_nodes_keep_their_own_maps_and_services():
    """/robot1 and /robot2, one domain: rooms 20 m apart, cameras in frames of their own (shared /tf)."""
    robots = {}
    try:
        for ns, offset in (("/robot1", 0.0), ("/robot2", 20.0)):
            room = make_room(seed=6, offset=(offset, 0.0, 0.0))
            poses = camera_path(room, 3, seed=3)
            h = InProcessNode(dict(FAST), lambda p: Recorder(), namespace=ns)
            assert h.node.get_fully_qualified_name() == f"{ns}/gs_reasoner"
            player = ScenePlayer(h.client, camera_frame=f"{ns[1:]}_optical")
            robots[ns] = (h, player, poses, room)
        for ns, (h, player, poses, room) in robots.items():
            assert player.wait_for_subscribers(10.0)
            rgb, depth, K = render(room, poses)
            t0 = h.client.get_clock().now().nanoseconds * 1e-9
            for i in range(len(poses)):
                player.publish_frame(rgb[i], depth[i], K, poses[i], t0 + 0.1 * i)
        for ns, (h, _, poses, room) in robots.items():
            assert h.wait_for(lambda h=h: h.node.health.total("integrated") >= 3, 15.0), h.node.health.snapshot()
            pts, _ = h.node.voxel_map.snapshot()
            lo, hi = room.bounds()
            assert np.all(np.abs(pts[:, 0] - room.offset[0]) < np.abs(lo[0]) + hi[0] + 1.0), f"{ns} holds the other map"
            resp = h.call("ground", description="the table")
            assert resp.success and resp.keyframes_used == 3, resp.message
            assert h.probe.spin_until(lambda h=h: "map" in h.probe.diag(), 5.0)
            assert h.probe.diag_value("keyframes") == 3
            assert h.probe.diag_msg.status[0].name.startswith(f"{ns[1:]}/gs_reasoner:")
    finally:
        for h, *_ in robots.values():
            h.close()
