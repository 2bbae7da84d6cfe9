"""The vision_msgs interfaces carried in third_party/vision_msgs (built by install.sh where no
system vision_msgs exists) have the standard type names and RIHS01 type hashes, so RViz plugins
and planners on a real ROS 2 install match ~/detections.

Where the expected hashes come from (both are rosidl's output for ROS 2 vision_msgs 4.1.x, the
version Jazzy and Kilted ship; the hash covers type names, field names, field types and default
values, not comments):
- Detection3D, BoundingBox3D, ObjectHypothesis, ObjectHypothesisWithPose: the "type_hashes" of
  the generated type description build/vision_msgs/rosidl_generator_type_description/
  vision_msgs/msg/Detection3D.json committed in the public colcon workspace borednuna/ipm-ws
  (commit 1d768272c24114f1004e19d0ef8118b73b9a2b68);
- Detection3DArray: the hash compiled into rosidl_generator_c's detection3_d_array__description.c
  of another public colcon build of vision_msgs (found by code search), whose EXPECTED_HASH
  entries for the four types above equal the values from ipm-ws.
"""
import json
import os
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
vision_msgs = pytest.importorskip("vision_msgs.msg")

EXPECTED = {
    "vision_msgs/msg/Detection3DArray": "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
    "vision_msgs/msg/Detection3D": "RIHS01_ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "vision_msgs/msg/BoundingBox3D": "RIHS01_bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "vision_msgs/msg/ObjectHypothesis": "RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "vision_msgs/msg/ObjectHypothesisWithPose":
        "RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc",
}


def _share() -> Path:
    """The vision_msgs share folder in use (the venv's for the carried one, /opt/ros/... on a robot)."""
    for prefix in [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]:
        path = Path(prefix) / "share" / "vision_msgs" / "msg"
        if (path / "Detection3DArray.json").is_file():
            return path
    pytest.skip("no vision_msgs type description (share/vision_msgs/msg/*.json) found")


def test_type_descriptions_have_the_standard_hashes():
    hashes = {}
    for name in ("Detection3DArray", "Detection3D", "BoundingBox3D", "ObjectHypothesis", "ObjectHypothesisWithPose"):
        description = json.loads((_share() / f"{name}.json").read_text())
        hashes.update({h["type_name"]: h["hash_string"] for h in description["type_hashes"]})
        assert description["type_description_msg"]["type_description"]["type_name"] == f"vision_msgs/msg/{name}"
    assert {k: hashes[k] for k in EXPECTED} == EXPECTED


def test_the_wire_type_and_hash_of_detections():
    """What a subscriber on another machine sees: the publisher's type name and hash."""
    from vision_msgs.msg import Detection3DArray

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("hash_probe", context=ctx)
        node.create_publisher(Detection3DArray, "/hash_probe/detections", 1)
        info, = node.get_publishers_info_by_topic("/hash_probe/detections")
        assert info.topic_type == "vision_msgs/msg/Detection3DArray"
        assert str(info.topic_type_hash) == EXPECTED["vision_msgs/msg/Detection3DArray"]
        node.destroy_node()
    finally:
        ctx.try_shutdown()
