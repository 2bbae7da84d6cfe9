"""TF lookups for the node: tf2_ros's buffer where a real ROS 2 install provides it, else the
project's own (gs_reasoner_ros.pipeline.tf_tree), behind one interface."""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import TransformStamped
from rclpy.duration import Duration
from rclpy.time import Time

from gs_reasoner_ros import geometry
from gs_reasoner_ros.pipeline.tf_tree import (ConnectivityError, ExtrapolationError, TfBuffer, check_frame_names,
                                              validated_transform)
from gs_reasoner_ros.ros.conversions import sec_to_stamp


class Tf2RosBuffer:
    """The same interface over tf2_ros.Buffer, used where a real ROS 2 install provides it."""

    def __init__(self, cache_time_s: float = 10.0):
        import tf2_ros

        self._tf2 = tf2_ros
        self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s))
        self.cache_time_s = float(cache_time_s)

    def set_transform(self, parent, child, stamp, translation, quat_xyzw, static=False) -> None:
        check_frame_names(parent, child)
        t, q = validated_transform(translation, quat_xyzw)
        msg = TransformStamped()
        msg.header.frame_id, msg.child_frame_id, msg.header.stamp = parent, child, sec_to_stamp(stamp)
        msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = map(float, t)
        r = msg.transform.rotation
        r.x, r.y, r.z, r.w = map(float, q)
        if static:
            self._buffer.set_transform_static(msg, "gs_reasoner")
        else:
            self._buffer.set_transform(msg, "gs_reasoner")

    def clear(self, static_too: bool = False) -> None:
        self._buffer.clear()

    def drop_after(self, stamp: float) -> None:
        self._buffer.clear()  # tf2 cannot drop part of a history: start afresh

    def lookup(self, target: str, source: str, stamp: float) -> np.ndarray:
        try:
            ts = self._buffer.lookup_transform(target, source, Time(nanoseconds=int(round(stamp * 1e9))))
        except self._tf2.ExtrapolationException as err:
            raise ExtrapolationError(str(err), future=True) from err
        except (self._tf2.LookupException, self._tf2.ConnectivityException) as err:
            raise ConnectivityError(str(err)) from err
        tr, r = ts.transform.translation, ts.transform.rotation
        return geometry.make_transform(np.array([tr.x, tr.y, tr.z]), np.array([r.x, r.y, r.z, r.w]))


def make_buffer(cache_time_s: float):
    """tf2_ros's buffer on a real ROS 2 install, else this module's own."""
    try:
        return Tf2RosBuffer(cache_time_s)
    except ImportError:
        return TfBuffer(cache_time_s)
