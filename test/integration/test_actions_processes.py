"""Issue 17 across three processes over real DDS: reasoner_node with the scripted reasoner
(gs_reasoner_ros/scripted.py: a known answer with three boxes, written token by token through
the production stream parser), a replayer publishing a rendered room as RGB-D + TF, and this
process as a planner using the action client (gs_reasoner_ros.client) and watching ~/markers
and ~/detections."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from vision_msgs.msg import Detection3DArray  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from gs_reasoner_ros.client import ReasonerClient  # noqa: E402
from gs_reasoner_ros.ros import qos  # noqa: E402
from gs_reasoner_ros.ros.conversions.detections import decode_detections  # noqa: E402
from gs_reasoner_ros.ros.conversions.markers import decode_boxes  # noqa: E402
from gs_reasoner_ros.ros.harness import stop_process  # noqa: E402

NODE = r"""
import sys
from gs_reasoner_ros.ros.process import run
from gs_reasoner_ros.scripted import ScriptedReasoner
run(sys.argv, reasoner_factory=lambda p: ScriptedReasoner(token_s=0.02))
"""
REPLAYER = r"""
import sys
from gs_reasoner_ros.ros import dds
dds.use_bundled_fastdds_profile()
import rclpy
from gs_reasoner_ros.ros.replay import ScenePlayer
from gs_reasoner_ros.synthetic import synthetic_scene

scene, _ = synthetic_scene(seed=3, n_frames=6, width=160, height=120)
rclpy.init()
node = rclpy.create_node("replayer")
player = ScenePlayer(node)
if not player.wait_for_subscribers(60.0):
    sys.exit("the node never subscribed")
player.play(scene, rate_hz=10.0)
print("played", flush=True)
sys.stdin.readline()
rclpy.shutdown()
"""
SUCCEEDED, CANCELED, ABORTED = 4, 5, 6


def stop(proc):
    stop_process(proc, 5.0)


class Planner:
    """The action client plus what the node publishes, with arrival times."""

    def __init__(self):
        self.client = ReasonerClient(name="planner")
        self.events, self._lock = [], threading.Lock()
        node = self.client.node
        node.create_subscription(MarkerArray, "/gs_reasoner/markers", lambda m: self._keep("markers", m), qos.LATCHED)
        node.create_subscription(Detection3DArray, "/gs_reasoner/detections", lambda m: self._keep("detections", m),
                                 qos.LATCHED)

    def _keep(self, kind, msg):
        with self._lock:
            self.events.append((kind, time.monotonic(), msg))

    def of(self, kind, since):
        with self._lock:
            return [(t, m) for k, t, m in self.events if k == kind and t >= since]


def box_of(obj):
    p, q, s = obj.bbox.center.position, obj.bbox.center.orientation, obj.bbox.size
    return obj.label, np.round([p.x, p.y, p.z, q.x, q.y, q.z, q.w, s.x, s.y, s.z], 6).tolist()


@pytest.fixture(scope="module")
def planner(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("actions3")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(tmp / "node.log", "w")
    node = subprocess.Popen([sys.executable, "-c", NODE, "--ros-args", "-p", "num_frames:=4", "-p", "query_queue_size:=0",
                             "-p", "keyframe_min_interval_s:=0.0", "-p", "tf_timeout_s:=1.0",
                             "-p", f"export_root:={tmp / 'exports'}"], stdout=log, stderr=subprocess.STDOUT, env=env)
    replayer = subprocess.Popen([sys.executable, "-c", REPLAYER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
    p = Planner()
    try:
        assert replayer.stdout.readline().strip() == "played", (tmp / "node.log").read_text()[-2000:]
        assert p.client.wait_for_server(30.0), (tmp / "node.log").read_text()[-2000:]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the node has keyframes to answer on
            if p.client.ground("warm-up", timeout_s=30).success:
                break
            time.sleep(0.3)
        yield p
    finally:
        p.client.close()
        replayer.stdin.close()
        stop(replayer)
        stop(node)
        log.close()


@pytest.mark.timeout(180)
def test_feedback_in_order_boxes_equal_the_result_and_markers_come_before_it(planner):
    t0 = time.monotonic()
    goal = planner.client.ask_stream("Is the sofa left of the table?", options=["A. yes", "B. no"], timeout_s=60)
    feedback = list(goal)
    result = goal.result()
    t_result = time.monotonic()
    assert goal.status == SUCCEEDED and result.success and len(result.objects) == 3, result.message
    tokens = [fb.tokens for fb in feedback]
    assert tokens == sorted(set(tokens)) and len(tokens) >= 5
    assert all(b.text.startswith(a.text) for a, b in zip(feedback, feedback[1:]))
    elapsed = [fb.elapsed_s for fb in feedback]
    assert elapsed == sorted(elapsed)
    final = [box_of(o) for o in result.objects]
    assert all([box_of(o) for o in fb.objects] == final[:len(fb.objects)] for fb in feedback)
    assert [len(fb.objects) for fb in feedback][-1] == 3
    markers = planner.of("markers", t0)
    assert markers[0][1].markers[0].action == Marker.DELETEALL
    t_first_box = next(t for t, m in markers if decode_boxes(m))
    assert t_first_box < t_result - 0.2  # the script goes on for well over a second after its first box
    label, corners = decode_boxes(markers[-1][1])[0]
    assert label.startswith("sofa")
    # ~/detections decoded back equal the result's boxes
    assert wait(lambda: len(planner.of("detections", t0)[-1][1].detections) == 3)
    array = planner.of("detections", t0)[-1][1]
    decoded = decode_detections(array)
    assert array.header.frame_id == result.header.frame_id == "map"
    for det, obj in zip(decoded, result.objects):
        label, numbers = box_of(obj)
        assert (det.label, round(det.confidence, 6)) == (label, round(obj.confidence, 6))
        assert np.allclose(np.r_[det.center, det.quat, det.size], numbers, atol=1e-6)


def wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except IndexError:
            pass
        time.sleep(0.02)
    return False


@pytest.mark.timeout(120)
def test_cancel_mid_answer_returns_within_100_ms_and_the_next_goal_succeeds(planner):
    goal = planner.client.ground_stream("the table", timeout_s=60)
    for fb in goal:
        if fb.objects:  # mid-answer: the first box is out, more text is coming
            break
    t0 = time.monotonic()
    result = goal.cancel()
    took = time.monotonic() - t0
    assert goal.status == CANCELED and not result.success and "cancelled after" in result.message
    print(f"cancel returned in {took * 1000:.1f} ms")
    assert took < 0.1, f"cancel took {took * 1000:.0f} ms"
    assert len(result.objects) >= 1  # the boxes written before the cancel come back
    following = planner.client.ground("the sofa", timeout_s=60)
    assert following.success and len(following.objects) == 3


@pytest.mark.timeout(120)
def test_two_goals_at_once_one_is_refused_saying_why(planner):
    first = planner.client.ask_stream("first?", timeout_s=60)
    second = planner.client.ground_stream("second", timeout_s=60)
    results = {"first": (first.result(), first), "second": (second.result(), second)}
    outcomes = sorted((r.success, g.status) for r, g in results.values())
    assert outcomes == [(False, ABORTED), (True, SUCCEEDED)]
    refused = next(r for r, _ in results.values() if not r.success)
    assert refused.message.startswith("busy: a query is running") and "query_queue_size" in refused.message
