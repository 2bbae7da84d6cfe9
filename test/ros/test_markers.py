"""Markers built from boxes decode back to the same corners; ids, namespaces, DELETEALL."""
import numpy as np
import pytest

pytest.importorskip("rclpy")
from visualization_msgs.msg import Marker  # noqa: E402

from gs_reasoner_ros import geometry  # noqa: E402
from gs_reasoner_ros.ros.conversions.markers import BOX_NS, LABEL_NS, box_markers, decode_boxes  # noqa: E402
from gs_reasoner_ros.pipeline.queries import WorldObject  # noqa: E402


def yaw_quat(deg):
    a = np.radians(deg) / 2
    return np.array([0, 0, np.sin(a), np.cos(a)])


OBJECTS = [
    WorldObject("sofa", np.array([1.0, 2.0, 0.4]), yaw_quat(30), np.array([2.0, 0.9, 0.8]), 0.87),
    WorldObject("tv", np.array([-1.5, 0.0, 1.2]), yaw_quat(0), np.array([1.2, 0.1, 0.7]), 0.5),
]


def test_markers_start_with_deleteall_and_have_stable_ids():
    arr = box_markers(OBJECTS, "map", 7.25)
    assert arr.markers[0].action == Marker.DELETEALL
    rest = arr.markers[1:]
    assert [(m.ns, m.id, m.type) for m in rest] == [
        (BOX_NS, 0, Marker.LINE_LIST), (LABEL_NS, 1, Marker.TEXT_VIEW_FACING),
        (BOX_NS, 2, Marker.LINE_LIST), (LABEL_NS, 3, Marker.TEXT_VIEW_FACING)]
    assert all(m.header.frame_id == "map" and m.header.stamp.sec == 7 and m.header.stamp.nanosec == 250000000
               for m in arr.markers)
    assert rest[1].text == "sofa (0.87)" and rest[3].text == "tv (0.50)"
    assert rest[0].scale.x > 0 and rest[1].scale.z > 0


def test_box_markers_decode_to_the_oriented_box_corners():
    decoded = decode_boxes(box_markers(OBJECTS, "map", 0.0))
    assert [label for label, _ in decoded] == ["sofa (0.87)", "tv (0.50)"]
    for obj, (_, corners) in zip(OBJECTS, decoded):
        expected = geometry.box_corners(obj.center, obj.quat, obj.size)
        # every expected corner is found, and nothing else
        d = np.linalg.norm(corners[:, None] - expected[None], axis=2)
        assert corners.shape == (8, 3) and d.min(axis=0).max() < 1e-6 and d.min(axis=1).max() < 1e-6
    # the 30-degree sofa really is rotated: its corners are not axis-aligned around the centre
    sofa = decoded[0][1]
    assert np.ptp(sofa[:, 0]) > 2.0 + 1e-3


def test_line_list_segments_are_the_twelve_box_edges():
    obj = OBJECTS[0]
    marker = box_markers([obj], "map", 0.0).markers[1]
    pts = np.array([[p.x, p.y, p.z] for p in marker.points]).reshape(12, 2, 3)
    lengths = sorted(np.round(np.linalg.norm(pts[:, 0] - pts[:, 1], axis=1), 9))
    assert lengths == sorted(np.round(np.repeat(obj.size, 4), 9))  # 4 edges along each box axis


def test_label_sits_above_the_box():
    arr = box_markers(OBJECTS, "map", 0.0)
    top = geometry.box_corners(OBJECTS[1].center, OBJECTS[1].quat, OBJECTS[1].size)[:, 2].max()
    label = arr.markers[4]
    assert label.pose.position.z > top
    assert abs(label.pose.position.x - OBJECTS[1].center[0]) < 1e-9


def test_no_objects_clears_everything():
    arr = box_markers([], "map", 0.0)
    assert [m.action for m in arr.markers] == [Marker.DELETEALL]
    assert decode_boxes(arr) == []
