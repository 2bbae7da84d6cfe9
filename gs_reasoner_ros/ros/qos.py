"""QoS profiles of the node's inputs and outputs (REP-2003 conventions)."""
from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data, qos_profile_system_default)

INPUT_QOS_NAMES = ("SENSOR_DATA", "SYSTEM_DEFAULT", "RELIABLE")


def input_qos(name: str) -> QoSProfile:
    """QoS for colour/depth/camera_info by parameter value: SENSOR_DATA (best effort, keep
    last 5; matches every camera driver), SYSTEM_DEFAULT, or RELIABLE (keep last 10)."""
    if name == "SENSOR_DATA":
        return qos_profile_sensor_data
    if name == "SYSTEM_DEFAULT":
        return qos_profile_system_default
    if name == "RELIABLE":
        return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    raise ValueError(f"input_qos must be one of {', '.join(INPUT_QOS_NAMES)}, got {name!r}")


# tf2's own choices: /tf keeps a deep history, /tf_static is latched for late joiners.
TF = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
TF_STATIC = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
# "Last result" outputs (markers, map): a late RViz or client still gets the latest one.
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
DIAGNOSTICS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
# Services: rclpy's default keeps only 10 requests, so a burst of calls would silently lose
# some; a deeper queue lets every caller get an answer (a refusal when busy).
SERVICES = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# ~/transition_event, as rcl's lifecycle interface publishes it.
LIFECYCLE_EVENTS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
