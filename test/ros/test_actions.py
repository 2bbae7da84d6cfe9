"""~/ask and ~/ground as actions, in-process over DDS: streamed feedback and boxes, ~/markers
and ~/detections as boxes close, cancel, concurrent goals, hostile goals, and the planners'
client. The model is the scripted reasoner (gs_reasoner_ros/scripted.py): it writes a known
answer with three boxes token by token through the production stream parser."""
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from vision_msgs.msg import Detection3DArray  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from gs_reasoner_ros.client import ReasonerClient  # noqa: E402
from gs_reasoner_ros.ros import qos  # noqa: E402
from gs_reasoner_ros.ros.conversions import stamp_to_sec  # noqa: E402
from gs_reasoner_ros.ros.conversions.detections import decode_detections  # noqa: E402
from gs_reasoner_ros.ros.conversions.markers import decode_boxes  # noqa: E402
from gs_reasoner_ros.ros.harness import InProcessNode  # noqa: E402
from gs_reasoner_ros.scripted import ScriptedReasoner  # noqa: E402
from gs_reasoner_ros.synthetic import synthetic_scene  # noqa: E402

CANCELED, ABORTED, SUCCEEDED = 5, 6, 4  # action_msgs/GoalStatus
NAMESPACE = "/actions"  # a node of its own: another test's /gs_reasoner on the domain must not answer
NODE = f"{NAMESPACE}/gs_reasoner"


def box_of(obj):
    p, q, s = obj.bbox.center.position, obj.bbox.center.orientation, obj.bbox.size
    return (obj.label, np.round([p.x, p.y, p.z, q.x, q.y, q.z, q.w, s.x, s.y, s.z], 6).tolist())


class Harness(InProcessNode):
    def __init__(self, tmp_path, token_s=0.01):
        self.scene, _ = synthetic_scene(seed=5, n_frames=6, width=160, height=120, yaw_deg=20.0)
        self.model = ScriptedReasoner(token_s=token_s)
        super().__init__(dict(export_root=str(tmp_path / "exports"), num_frames=4, keyframe_min_interval_s=0.0,
                              query_queue_size=0, tf_timeout_s=0.3, map_stride=2, voxel_size=0.05),
                         reasoner_factory=lambda p: self.model, namespace=NAMESPACE)
        self.events = []  # (kind, monotonic time, message), in arrival order
        self._lock = threading.Lock()
        c = self.client
        c.create_subscription(MarkerArray, f"{NODE}/markers", lambda m: self._keep("markers", m), qos.LATCHED)
        c.create_subscription(Detection3DArray, f"{NODE}/detections", lambda m: self._keep("detections", m),
                              qos.LATCHED)

    def _keep(self, kind, msg):
        with self._lock:
            self.events.append((kind, time.monotonic(), msg))

    def of(self, kind, since=0.0):
        with self._lock:
            return [(t, m) for k, t, m in self.events if k == kind and t >= since]


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    harness = Harness(tmp_path_factory.mktemp("actions"))
    assert harness.player.wait_for_subscribers(10.0)
    harness.player.play(harness.scene, rate_hz=20.0)
    assert harness.wait_for(lambda: len(harness.node.keyframes) == len(harness.scene), 15.0)
    harness.reasoner = ReasonerClient(target=NODE)
    assert harness.reasoner.wait_for_server(10.0)
    yield harness
    harness.reasoner.close()
    harness.close()


def test_feedback_streams_in_order_and_its_boxes_are_the_results(h):
    t0 = time.monotonic()
    goal = h.reasoner.ask_stream("where is the sofa?", timeout_s=30)
    feedback = [(time.monotonic(), fb) for fb in goal]
    result = goal.result()
    t_result = time.monotonic()
    assert result.success and goal.status == SUCCEEDED, result.message
    assert result.answer == "B" and len(result.objects) == 3
    tokens = [fb.tokens for _, fb in feedback]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens) and len(feedback) >= 4
    texts = [fb.text for _, fb in feedback]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # each text extends the one before
    assert result.reasoning.startswith(texts[-1])
    final = [box_of(o) for o in result.objects]
    for _, fb in feedback:  # the boxes so far are always the first boxes of the result, in order
        assert [box_of(o) for o in fb.objects] == final[:len(fb.objects)]
    counts = [len(fb.objects) for _, fb in feedback]
    assert counts[0] == 0 and counts[-1] == 3 and sorted(counts) == counts
    # each box came in the feedback of the token that closed it (tokens are 3 characters)
    firsts = [next(fb for _, fb in feedback if len(fb.objects) == n) for n in (1, 2, 3)]
    assert all("</bbox>" in fb.text[-9:] and fb.text.count("</bbox>") == n for n, fb in zip((1, 2, 3), firsts))
    # markers: a DELETEALL when the question started, then the first box alone, before the result
    markers = h.of("markers", t0)
    assert markers[0][1].markers[0].action == Marker.DELETEALL and len(markers[0][1].markers) == 1
    first_box = next((t, m) for t, m in markers if decode_boxes(m))
    assert first_box[0] < t_result
    assert all(m.action != Marker.DELETEALL for _, msg in markers[1:] for m in msg.markers)
    (label, corners), = decode_boxes(first_box[1])
    assert label.startswith("sofa")
    assert len(decode_boxes(markers[-1][1])) == 3


def test_detections_decode_to_the_result_boxes(h):
    t0, t0_wall = time.monotonic(), time.time()
    result = h.reasoner.ground("the table", timeout_s=30)
    assert result.success
    # the array published after the answer (streamed ones, stamped as they go, may arrive after it)
    final = lambda: [m for _, m in h.of("detections", t0) if m.header == result.header]  # noqa: E731
    assert h.wait_for(lambda: final() and len(final()[-1].detections) == 3)
    array = final()[-1]
    assert array.header.frame_id == "map"
    decoded = decode_detections(array)
    assert [d.id for d in decoded] == ["0", "1", "2"]
    for det, obj in zip(decoded, result.objects):
        label, numbers = box_of(obj)
        assert det.label == label and det.confidence == pytest.approx(obj.confidence)
        assert np.allclose(np.r_[det.center, det.quat, det.size], numbers, atol=1e-6)
    # (by stamp: the previous question's last array can arrive after t0)
    streamed = [len(m.detections) for _, m in h.of("detections", t0) if stamp_to_sec(m.header.stamp) >= t0_wall]
    assert streamed[0] == 0 and 1 in streamed  # cleared at the start, then box by box


def test_services_publish_detections_too(h):
    t0 = time.monotonic()
    resp = h.call("ground", description="the table")
    assert resp.success and len(resp.objects) == 3
    assert h.wait_for(lambda: h.of("detections", t0))
    decoded = decode_detections(h.of("detections", t0)[-1][1])
    assert [d.label for d in decoded] == [o.label for o in resp.objects]


def test_cancel_stops_the_model_at_the_next_token_and_the_next_goal_runs(h):
    goal = h.reasoner.ask_stream("a long question", timeout_s=30)
    it = iter(goal)
    while next(it).tokens < 5:
        pass
    t0 = time.monotonic()
    result = goal.cancel()
    took = time.monotonic() - t0
    assert goal.status == CANCELED and not result.success
    assert "cancelled after" in result.message and took < 0.1, (took, result.message)
    assert 0 < len(result.reasoning) < 60
    assert h.wait_for(lambda: not h.model.running.is_set(), 1.0)
    again = h.reasoner.ask("and now?", timeout_s=30)
    assert again.success and len(again.objects) == 3


def test_a_second_goal_while_one_runs_is_refused_saying_why(h):
    first = h.reasoner.ground_stream("the sofa", timeout_s=30)
    assert h.wait_for(h.model.running.is_set, 10.0)
    second = h.reasoner.ask_stream("meanwhile?", timeout_s=30)
    refused = second.result()
    assert second.status == ABORTED and not refused.success
    assert "busy" in refused.message and "query_queue_size" in refused.message
    assert first.result().success


@pytest.mark.parametrize("field,value,why", [
    ("question", "", "empty"),
    ("question", "x" * 3000, "2000"),
    ("question", "\x07\x1b  \t", "empty"),  # control characters only
])
def test_hostile_goals_get_the_services_errors(h, field, value, why):
    service = h.call("ask", **{field: value})
    goal = h.reasoner.ask_stream(**{field: value}, timeout_s=10)
    result = goal.result()
    assert goal.status == ABORTED and not result.success
    assert result.message == service.message and why in result.message.lower()


def test_hostile_ground_goal_and_too_many_options(h):
    resp = h.call("ground", description="   ")
    result = h.reasoner.ground_stream("   ", timeout_s=10).result()
    assert not result.success and result.message == resp.message and resp.message
    options = [f"{i}" for i in range(40)]
    resp = h.call("ask", question="which?", options=options)
    result = h.reasoner.ask_stream("which?", options=options, timeout_s=10).result()
    assert not result.success and result.message == resp.message and "options" in resp.message


def test_client_timeout_cancels_the_goal(h):
    goal = h.reasoner.ask_stream("slow?", timeout_s=0.3)
    with pytest.raises(TimeoutError):
        goal.result()
    assert h.wait_for(lambda: not h.model.running.is_set(), 2.0)
    assert h.reasoner.ground("after a timeout", timeout_s=30).success


def test_forty_concurrent_goals_each_get_a_result(h):
    """40 callers, one goal each: every goal is answered (accepted) and ends, the one that ran
    SUCCEEDED and the rest ABORTED saying busy (the node's query_queue_size is 0 here). rclpy's
    default goal service keeps 10 requests: 29 of 40 were lost. The callers keep a burst of replies
    too (qos.SERVICES, as ReasonerClient does): every client's reader receives every caller's
    reply, so with rclpy's default 10 some of their own are pushed out before they are taken."""
    from rclpy.action import ActionClient

    from gs_reasoner_ros.action import GroundObjects

    deep = dict(goal_service_qos_profile=qos.SERVICES, result_service_qos_profile=qos.SERVICES,
                cancel_service_qos_profile=qos.SERVICES)
    clients = [ActionClient(h.client, GroundObjects, f"{NODE}/ground", **deep) for _ in range(40)]
    try:
        assert h.wait_for(lambda: all(c.server_is_ready() for c in clients), 15.0)
        time.sleep(2.0)  # the server's reply writers match new clients a little after their requests do
        sent = [c.send_goal_async(GroundObjects.Goal(description=f"thing {i}")) for i, c in enumerate(clients)]
        assert h.wait_for(lambda: all(f.done() for f in sent), 60.0), \
            f"{sum(not f.done() for f in sent)} of 40 goals were never answered"
        handles = [f.result() for f in sent]
        assert all(g.accepted for g in handles)
        results = [g.get_result_async() for g in handles]
        assert h.wait_for(lambda: all(f.done() for f in results), 120.0), \
            f"{sum(not f.done() for f in results)} of 40 goals never ended"
        statuses = [f.result().status for f in results]
        assert statuses.count(SUCCEEDED) >= 1 and set(statuses) <= {SUCCEEDED, ABORTED}
        assert all("busy" in f.result().result.message for f in results if f.result().status == ABORTED)
    finally:
        for c in clients:
            c.destroy()
