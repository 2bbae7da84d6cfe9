"""Issue 19: no peer on the domain can starve, wipe or poison the node. In-process over real DDS
with the tiny untrained model (the answers' content does not matter here, only that they come)."""
from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import TransformStamped  # noqa: E402
from lifecycle_msgs.msg import Transition, TransitionEvent  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from gs_reasoner_ros.ros import conversions  # noqa: E402
from gs_reasoner_ros.ros.harness import InProcessNode, wait_until  # noqa: E402
from gs_reasoner_ros.ros.node import SUCCESS, load_reasoner  # noqa: E402
from gs_reasoner_ros.ros.replay import CAMERA_FRAME  # noqa: E402
from gs_reasoner_ros.synthetic import synthetic_scene  # noqa: E402


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    scene, _ = synthetic_scene(seed=4, n_frames=8, width=160, height=120)
    node = InProcessNode(dict(export_root=str(tmp_path_factory.mktemp("exports")), diagnostics_period_s=0.2,
                              map_publish_period_s=0.0, voxel_size=0.05, num_frames=2, keyframe_min_interval_s=0.0,
                              tf_timeout_s=0.3, max_new_tokens_limit=4),
                         reasoner_factory=load_reasoner)
    node.scene = scene
    node.player.wait_for_subscribers(10.0)
    yield node
    node.close()


def fill(h, indices=range(4)):
    before = h.node.health.total("integrated")
    h.player.play(h.scene, rate_hz=20.0, order=list(indices), clock=time.time)
    assert h.wait_for(lambda: h.node.health.total("integrated") >= before + len(indices), 10.0)
    return len(h.node.voxel_map)


def tf_msg(child, stamp, x=0.0, parent="map"):
    ts = TransformStamped(header=conversions.header(parent, stamp), child_frame_id=child)
    ts.transform.translation.x = float(x)
    ts.transform.rotation.w = 1.0
    return TFMessage(transforms=[ts])


def test_single_messages_do_not_wipe_the_map(h):
    points = fill(h)
    resets = h.node.health.total("time_jump_resets")
    now = time.time()
    h.player.info.publish(conversions.make_camera_info(h.scene.intrinsics[0], 160, 120, 0.0, CAMERA_FRAME))
    h.player.tf.publish(tf_msg(CAMERA_FRAME, 0.0))  # the camera's edge, stamped 0
    h.player.tf.publish(tf_msg("elsewhere", now + 3600.0))  # an unrelated frame far ahead ...
    h.player.tf.publish(tf_msg("elsewhere", now))  # ... then at now
    assert h.wait_for(lambda: h.node.health.total("invalid_stamps") >= 3, 5.0)
    time.sleep(0.3)
    assert h.node.health.total("time_jump_resets") == resets
    assert len(h.node.voxel_map) >= points  # nothing wiped (and the map may only grow)


def test_a_poisoned_frame_never_fails_a_later_question(h):
    fill(h)
    rejected = h.node.health.total("rejected")
    stamp = time.time()
    rgb, depth = h.scene.rgb[0], h.scene.depth[0]
    bad_k = h.scene.intrinsics[0].copy()
    bad_k[0, 0] = bad_k[1, 1] = 1e-6  # focal length near zero: every pixel at infinity
    far = np.full_like(depth, 1e30)  # a 32FC1 depth of 1e30 m
    for k, d, t in ((bad_k, depth, stamp), (h.scene.intrinsics[0], far, stamp + 0.05)):
        h.player.publish_pose(h.scene.poses[0], t)
        h.player.info.publish(conversions.make_camera_info(k, 160, 120, t, CAMERA_FRAME))
        h.player.color.publish(conversions.rgb_to_image(rgb, t, CAMERA_FRAME))
        h.player.depth.publish(conversions.depth_to_image(d, t, CAMERA_FRAME, "32FC1"))
        time.sleep(0.1)
    assert h.wait_for(lambda: h.node.health.total("rejected") >= rejected + 1, 5.0)
    pts = h.node.voxel_map.points()
    assert np.all(np.isfinite(pts)) and np.abs(pts).max() < 100.0  # no point from either frame
    fill(h, range(4, 6))
    for service, fields in (("ground", dict(description="the sofa")), ("ask", dict(question="how big?"))):
        resp = h.call(service, timeout=120.0, **fields)
        assert resp.success, resp.message


def test_two_hundred_concurrent_calls_are_all_answered(h):
    futures = [h.probe.call_async("clear") if i % 2 else h.probe.call_async("ground", description=f"thing {i}")
               for i in range(200)]
    assert wait_until(lambda: all(f.done() for f in futures), 120.0), \
        f"{sum(not f.done() for f in futures)} of 200 calls were never answered"
    answers = [f.result() for f in futures]
    refused = [a.message for a in answers if not a.success]
    assert all(m for m in refused)  # every refusal says why
    assert h.node.state == "active"


def test_forty_concurrent_lifecycle_callers_are_all_answered(h):
    """40 concurrent change_state callers (and 10 get_state), each with rclpy's default client
    QoS as `ros2 lifecycle set` has: all answered, and the node still spins (rapid activate /
    deactivate once killed its executor: ros/spinning.py). rcl's own interface (10 requests
    kept) left 30 of the 50 without an answer."""
    name = h.node.get_fully_qualified_name()
    events = []
    h.client.create_subscription(TransitionEvent, f"{name}/transition_event", events.append, 1000)
    changes = [h.client.create_client(ChangeState, f"{name}/change_state") for _ in range(40)]
    states = [h.client.create_client(GetState, f"{name}/get_state") for _ in range(10)]
    assert wait_until(lambda: all(c.service_is_ready() for c in changes + states), 10.0)
    time.sleep(2.0)  # the node's reply writers match new clients a little after their requests do
    transitions = (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE)
    futures = [c.call_async(ChangeState.Request(transition=Transition(id=transitions[i % 2])))
               for i, c in enumerate(changes)]
    futures += [c.call_async(GetState.Request()) for c in states]
    assert wait_until(lambda: all(f.done() for f in futures), 60.0), \
        f"{sum(not f.done() for f in futures)} of 50 lifecycle calls were never answered"
    taken = sum(f.result().success for f in futures[:40])
    assert taken >= 1  # the first deactivate at least; others may find the node mid-transition
    assert wait_until(lambda: len(events) >= 2 * taken, 5.0)  # into and out of each transition state
    assert events[0].start_state.label == "active" and events[0].goal_state.label == "deactivating"
    if h.node.state != "active":
        assert h.node.trigger_activate() == SUCCESS
    assert h.node.state == "active"


def test_a_tf_flood_is_bounded_and_so_are_the_texts_about_it(h):
    stamp = time.time()
    long_names = [f"f{i}_" + "x" * 10_000 for i in range(200)]
    many = [f"frame_{i}" for i in range(1500)]
    for names in (long_names, many):
        msg = TFMessage(transforms=[tf_msg(n, stamp).transforms[0] for n in names])
        h.node._on_tf(msg)  # the callback itself: 1,700 transforms over DDS are not the point
    assert len(h.node.tf.frames()) <= 1001  # MAX_FRAMES children and their parent
    assert h.node.health.total("tf_invalid") >= 200 + 500
    h.player.publish_frame(h.scene.rgb[0], h.scene.depth[0], h.scene.intrinsics[0], h.scene.poses[0], stamp)
    time.sleep(0.5)
    snapshot = h.node.health.snapshot()
    assert all(len(str(v)) <= 600 for v in snapshot.values())
    assert wait_until(lambda: h.probe.diag_msg is not None, 5.0)
    time.sleep(0.5)
    size = sum(len(kv.value) + len(kv.key) for s in h.probe.diag_msg.status for kv in s.values)
    assert size < 20_000, size


def test_a_configuration_over_the_memory_budget_is_refused_at_configure(h):
    node = h.node
    ok = node.set_parameters([Parameter("voxel_size", value=0.005), Parameter("max_voxels", value=50_000_000),
                              Parameter("map_stride", value=1)])
    assert all(r.successful for r in ok)  # the ranges allow each value; the budget decides at configure
    try:
        node.trigger_deactivate()
        node.trigger_cleanup()
        node.trigger_configure()
        assert node.state == "unconfigured"
        assert "max_voxels" in node._configure_error and "memory_budget_mb" in node._configure_error
        resp = h.call("ground", description="the sofa")
        assert not resp.success and "max_voxels" in resp.message
    finally:
        node.set_parameters([Parameter("voxel_size", value=0.05), Parameter("max_voxels", value=500_000),
                             Parameter("map_stride", value=2)])
        node.trigger_configure()
        node.trigger_activate()
    assert node.state == "active"
