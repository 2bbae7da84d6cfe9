"""reasoner_node in-process with an injected reasoner: services, markers, map cloud, bad input,
lifecycle, concurrency. The model is a deterministic oracle that 'finds' the true furniture, so
returned boxes, markers and the wall alignment can be checked against ground truth."""
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from gs_reasoner_ros import geometry  # noqa: E402
from gs_reasoner_ros.reasoning import Answer, GroundedBox  # noqa: E402
from gs_reasoner_ros.ros import conversions, qos  # noqa: E402
from gs_reasoner_ros.ros.conversions.markers import decode_boxes  # noqa: E402
from gs_reasoner_ros.pipeline.queries import UNTRAINED_NOTE  # noqa: E402
from gs_reasoner_ros.ros.harness import InProcessNode  # noqa: E402
from gs_reasoner_ros.srv import AskSpatialQuestion  # noqa: E402
from gs_reasoner_ros.synthetic import synthetic_scene  # noqa: E402


class Oracle:
    """Fake reasoner: answers with the true objects' bounds in the model frame it is given."""

    untrained = True  # so the node must say so in every message

    def __init__(self, room):
        self.room, self.calls = room, 0
        self.gate = threading.Event()  # cleared: answers block until a test opens it
        self.gate.set()

    def answer(self, scene, question, options=(), task="spatial", max_new_tokens=None):
        self.calls += 1
        self.gate.wait(20.0)
        boxes = []
        for label, center, quat, size in self.room.world_boxes()[:3]:
            corners = geometry.transform_points(scene.axis_align, geometry.box_corners(center, quat, size))
            boxes.append(GroundedBox(label, corners.min(0), corners.max(0), 0.75))
        return Answer(answer=f"{task}: {question}", text="...", objects=boxes, keyframes_used=len(scene))


class Harness(InProcessNode):
    def __init__(self, tmp_path):
        self.scene, self.room = synthetic_scene(seed=5, n_frames=12, width=160, height=120, yaw_deg=20.0)
        self.oracle = Oracle(self.room)
        super().__init__(dict(export_root=str(tmp_path / "exports"), map_publish_period_s=0.2,
                              diagnostics_period_s=0.2, voxel_size=0.03, num_frames=6, keyframe_min_interval_s=0.0,
                              query_queue_size=0, tf_timeout_s=0.3, map_stride=1),
                         reasoner_factory=lambda p: self.oracle)
        self.latest = {}
        c = self.client
        c.create_subscription(MarkerArray, "/gs_reasoner/markers", lambda m: self._keep("markers", m), qos.LATCHED)
        c.create_subscription(PointCloud2, "/gs_reasoner/map_cloud", lambda m: self._keep("map", m), qos.LATCHED)
        c.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._keep("diag", m), 10)
        self.raw = {"color": c.create_publisher(Image, "color/image", 10),
                    "depth": c.create_publisher(Image, "depth/image", 10),
                    "info": c.create_publisher(CameraInfo, "color/camera_info", 10),
                    "tf": c.create_publisher(TFMessage, "/tf", 10)}

    def _keep(self, key, msg):
        self.latest[key] = msg

    def diag(self):
        msg = self.latest.get("diag")
        return {s.name.split(": ")[1]: {kv.key: kv.value for kv in s.values} for s in msg.status} if msg else {}


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    harness = Harness(tmp_path_factory.mktemp("node"))
    assert harness.player.wait_for_subscribers(10.0)
    harness.stamps = harness.player.play(harness.scene, rate_hz=20.0)
    assert harness.wait_for(lambda: len(harness.node.keyframes) == len(harness.scene), 15.0), \
        (len(harness.node.keyframes), harness.node.health.snapshot())
    yield harness
    harness.close()


def test_frames_are_fused_into_the_map_cloud(h):
    assert h.wait_for(lambda: "map" in h.latest and h.latest["map"].width > 1000)
    cloud = h.latest["map"]
    assert cloud.header.frame_id == "map"
    pts, cols = conversions.cloud_to_arrays(cloud)
    # every map point lies on a surface of the room: reproject into frame 0 and compare depths
    K, T = h.scene.intrinsics[0], h.scene.poses[0]
    cam = geometry.transform_points(np.linalg.inv(T), pts)
    front = cam[:, 2] > 0.2
    u = np.round(K[0, 0] * cam[front, 0] / cam[front, 2] + K[0, 2]).astype(int)
    v = np.round(K[1, 1] * cam[front, 1] / cam[front, 2] + K[1, 2]).astype(int)
    inside = (u >= 0) & (u < 160) & (v >= 0) & (v < 120)
    z = cam[front][inside, 2]
    seen = h.scene.depth[0][v[inside], u[inside]]
    visible = z <= seen + 0.05  # points not hidden behind what frame 0 sees
    assert visible.sum() > 500
    assert np.median(np.abs(z[visible] - seen[visible])) < 0.03
    assert cols is not None and cols.std() > 5  # colours came through


def test_ground_returns_world_boxes_and_latched_markers_match(h):
    resp = h.call("ground", description="the furniture")
    assert resp.success and UNTRAINED_NOTE in resp.message
    assert resp.header.frame_id == "map" and resp.keyframes_used == 6
    assert abs(conversions.stamp_to_sec(resp.header.stamp) - h.stamps[-1]) < 1e-6
    truth = h.room.world_boxes()[:3]
    assert [o.label for o in resp.objects] == [t[0] for t in truth]
    for obj, (label, center, quat, size) in zip(resp.objects, truth):
        c = obj.bbox.center.position
        np.testing.assert_allclose([c.x, c.y, c.z], center, atol=1e-6)
        q = obj.bbox.center.orientation
        got = geometry.box_corners([c.x, c.y, c.z], [q.x, q.y, q.z, q.w],
                                   [obj.bbox.size.x, obj.bbox.size.y, obj.bbox.size.z])
        want = geometry.box_corners(center, quat, size)
        assert np.linalg.norm(got[:, None] - want[None], axis=2).min(axis=1).max() < 0.1
    # markers: latched, decoded corners equal the response boxes exactly
    assert h.wait_for(lambda: "markers" in h.latest and len(h.latest["markers"].markers) == 7)
    decoded = decode_boxes(h.latest["markers"])
    for obj, (text, corners) in zip(resp.objects, decoded):
        assert text == f"{obj.label} (0.75)"
        c, q, s = obj.bbox.center.position, obj.bbox.center.orientation, obj.bbox.size
        want = geometry.box_corners([c.x, c.y, c.z], [q.x, q.y, q.z, q.w], [s.x, s.y, s.z])
        assert np.linalg.norm(corners[:, None] - want[None], axis=2).min(axis=1).max() < 1e-5
    assert all(m.header.frame_id == "map" for m in h.latest["markers"].markers)


def test_ask_answers_and_reports(h):
    resp = h.call("ask", question="how far is the sofa from the tv?", max_new_tokens=64)
    assert resp.success and resp.answer == "spatial: how far is the sofa from the tv?"
    assert resp.latency_s >= 0 and len(resp.objects) == 3
    direct = h.call("ask", question="is it big?", direct=True)
    assert direct.success and direct.answer.startswith("qa:")


@pytest.mark.parametrize("question, error", [("", "empty"), ("x" * 10_000, "limit is 2000")])
def test_bad_questions_are_refused(h, question, error):
    resp = h.call("ask", question=question)
    assert not resp.success and error in resp.message and resp.header.frame_id == "map"


def test_second_concurrent_query_is_refused_and_intake_keeps_flowing(h):
    h.oracle.gate.clear()
    results = []
    t = threading.Thread(target=lambda: results.append(h.call("ground", description="slow")))
    t.start()
    assert h.wait_for(lambda: h.node.worker.busy, 5.0)
    refused = h.call("ask", question="me too?")
    integrated = h.node.health.total("integrated")
    h.player.play(h.scene, rate_hz=30.0, order=[0, 1, 2, 3, 4])  # during the query
    assert h.wait_for(lambda: h.node.health.total("integrated") >= integrated + 5, 5.0)
    assert h.node.worker.busy  # the frames went in while the model was still running
    h.oracle.gate.set()
    t.join()
    assert not refused.success and "busy" in refused.message
    assert results[0].success


def test_fifty_concurrent_calls_one_runs_the_rest_are_refused_at_once(h):
    h.oracle.gate.clear()
    calls_before = h.oracle.calls
    client = h.clients["ask"]
    futures = [client.call_async(AskSpatialQuestion.Request(question=f"q{i}?")) for i in range(50)]
    integrated = h.node.health.total("integrated")
    h.player.play(h.scene, rate_hz=30.0, order=[5, 6, 7])
    assert h.wait_for(lambda: sum(f.done() for f in futures) == 49, 20.0)  # refused at once
    assert h.wait_for(lambda: h.node.health.total("integrated") >= integrated + 3, 5.0)
    h.oracle.gate.set()
    assert h.wait_for(lambda: all(f.done() for f in futures), 20.0)
    results = [f.result() for f in futures]
    assert sum(r.success for r in results) == 1 and h.oracle.calls == calls_before + 1
    assert all("busy" in r.message for r in results if not r.success)
    assert h.node.health.total("integrated") >= integrated + 3


def test_malformed_input_is_rejected_and_counted(h):
    before = h.node.health.total("rejected")
    now = h.client.get_clock().now().nanoseconds * 1e-9
    rgb, depth, K, pose = h.scene.rgb[0], h.scene.depth[0], h.scene.intrinsics[0], h.scene.poses[0]
    bad_cases = []
    img = conversions.rgb_to_image(rgb, 0, "camera_color_optical_frame")
    img.encoding = "yuv422"
    bad_cases.append((img, conversions.depth_to_image(depth, 0, "camera_color_optical_frame"), K))
    bad_cases.append((conversions.rgb_to_image(rgb, 0, "camera_color_optical_frame"),
                      conversions.depth_to_image(depth[:, :100], 0, "camera_color_optical_frame"), K))  # sizes
    bad_cases.append((conversions.rgb_to_image(rgb, 0, "camera_color_optical_frame"),
                      conversions.depth_to_image(depth, 0, "camera_color_optical_frame"), np.zeros((3, 3))))
    for i, (c, d, k) in enumerate(bad_cases):
        stamp = now + 0.1 * i
        for m in (c, d):
            m.header.stamp = conversions.sec_to_stamp(stamp)
        h.player.publish_pose(pose, stamp)
        h.raw["info"].publish(conversions.make_camera_info(k, 160, 120, stamp, "camera_color_optical_frame"))
        h.raw["color"].publish(c)
        h.raw["depth"].publish(d)
    assert h.wait_for(lambda: h.node.health.total("rejected") >= before + 3, 5.0)
    # NaN and inf depth is not an error: those pixels are just empty
    nan_depth = depth.copy()
    nan_depth[:60] = np.nan
    nan_depth[60:, :10] = np.inf
    integrated = h.node.health.total("integrated")
    h.player.publish_frame(rgb, nan_depth, K, pose, now + 1.0)
    assert h.wait_for(lambda: h.node.health.total("integrated") > integrated, 5.0)
    assert h.node.health.total("rejected") == before + 3
    assert h.wait_for(lambda: "rejecting input" in str(h.latest.get("diag")), 3.0)


def test_bad_tf_is_ignored_and_frames_without_pose_are_dropped(h):
    invalid, failures = h.node.health.total("tf_invalid"), h.node.health.total("tf_failures")
    now = h.client.get_clock().now().nanoseconds * 1e-9 + 5.0
    bad = np.eye(4)
    bad[0, 3] = np.nan
    h.player.publish_pose(bad, now)
    assert h.wait_for(lambda: h.node.health.total("tf_invalid") == invalid + 1, 5.0)
    # a frame in a camera frame TF never mentions waits tf_timeout_s, then is dropped and counted
    rgb, depth, K = h.scene.rgb[0], h.scene.depth[0], h.scene.intrinsics[0]
    h.raw["info"].publish(conversions.make_camera_info(K, 160, 120, now, "nowhere"))
    h.raw["color"].publish(conversions.rgb_to_image(rgb, now, "nowhere"))
    h.raw["depth"].publish(conversions.depth_to_image(depth, now, "nowhere"))
    assert h.wait_for(lambda: h.node.health.total("tf_failures") == failures + 1, 5.0)
    assert "nowhere" in h.node.health.snapshot()["last_tf_failure"]


def test_export_refuses_escapes_and_writes_inside_the_root(h, tmp_path_factory):
    for name in ("../evil", "/tmp/evil", "", "a/b", ".."):
        resp = h.call("export_scene", name=name)
        assert not resp.success and resp.path == "" and resp.message, name
    resp = h.call("export_scene", name="room_5")
    assert resp.success, resp.message
    assert resp.path.endswith("/exports/room_5")
    from gs_reasoner_ros.scene import Scene

    exported = Scene.load_processed(resp.path)
    assert len(exported) == len(h.node.keyframes)
    assert not np.allclose(exported.axis_align, np.eye(4))  # the 20-degree room was aligned


def test_diagnostics_report_the_pipeline(h):
    assert h.wait_for(lambda: "model" in h.diag(), 3.0)
    d = h.diag()
    assert float(d["input"]["synced_total"]) >= len(h.scene)
    assert int(d["map"]["keyframes"]) == len(h.node.keyframes) and int(d["map"]["map_points"]) > 1000
    assert d["model"]["untrained"] == "True" and int(d["model"]["queries_served_total"]) >= 2
    levels = {s.name: s.level for s in h.latest["diag"].status}
    assert levels["gs_reasoner: model"] == DiagnosticStatus.WARN  # untrained weights
    assert levels["gs_reasoner: tf"] == DiagnosticStatus.WARN  # the dropped frame of the TF test


def test_deactivate_stops_intake_and_clear_empties_memory(h):
    h.node.trigger_deactivate()
    assert h.node.state == "inactive"
    integrated = h.node.health.total("integrated")
    h.player.play(h.scene, rate_hz=30.0, order=[0, 1])
    time.sleep(0.5)
    assert h.node.health.total("integrated") == integrated
    resp = h.call("clear")
    assert resp.success and "cleared" in resp.message
    assert len(h.node.keyframes) == 0 and len(h.node.voxel_map) == 0
    assert h.wait_for(lambda: h.latest["markers"].markers and len(h.latest["markers"].markers) == 1, 3.0)
    empty = h.call("ground", description="anything")
    assert not empty.success and "no keyframes yet" in empty.message and UNTRAINED_NOTE in empty.message
    h.node.trigger_activate()
    assert h.node.state == "active"
    assert h.player.wait_for_subscribers(5.0)
    h.player.play(h.scene, rate_hz=30.0, order=[0, 1, 2])
    assert h.wait_for(lambda: len(h.node.keyframes) == 3, 5.0)


def test_clock_jumping_back_resets_instead_of_mixing_timelines(h):
    resets = h.node.health.total("time_jump_resets")
    assert len(h.node.keyframes) > 0
    # a bag loops: stamps restart 100 s in the past
    h.player.play(h.scene, rate_hz=30.0, order=[3, 4], clock=lambda: time.time() - 100.0)
    assert h.wait_for(lambda: h.node.health.total("time_jump_resets") == resets + 1, 5.0)
    assert h.wait_for(lambda: len(h.node.keyframes) == 2, 5.0)  # only the new timeline is remembered
    newest = h.node.keyframes.newest_stamp
    assert newest < time.time() - 90
