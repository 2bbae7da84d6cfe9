"""The node's synchronizer inputs: message_filters on a real ROS 2 install, else a subscriber
feeding gs_reasoner_ros.pipeline.sync_matcher (message_filters is not on PyPI). Same shape:
`Subscriber(node, type, topic, qos_profile=...)`, `ApproximateTimeSynchronizer(subs,
queue_size, slop)`, `registerCallback(cb)`.
"""
from __future__ import annotations

import importlib
import sys

from rclpy.node import Node

from gs_reasoner_ros.pipeline.sync_matcher import ApproximateTimeSynchronizer, SimpleFilter  # noqa: F401

__all__ = ["ApproximateTimeSynchronizer", "Subscriber", "message_filters"]


def message_filters():
    """The system message_filters module when importable (real ROS 2), else this module."""
    try:
        return importlib.import_module("message_filters")
    except ImportError:
        return sys.modules[__name__]


class Subscriber(SimpleFilter):
    """A subscription whose messages feed filters; extra keywords go to create_subscription."""

    def __init__(self, node: Node, msg_type, topic: str, qos_profile=10, **kwargs):
        super().__init__()
        self.node, self.topic = node, topic
        self.sub = node.create_subscription(msg_type, topic, self.signalMessage, qos_profile, **kwargs)

    def getTopic(self) -> str:  # noqa: N802 (message_filters' name)
        return self.topic

    def __del__(self):
        pass  # destruction of self.sub is explicit (node.destroy_subscription), as upstream
