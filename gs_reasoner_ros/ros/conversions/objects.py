"""Grounded objects -> the package's GroundedObject messages (service responses)."""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Vector3

from gs_reasoner_ros.msg import BoundingBox3D, GroundedObject
from gs_reasoner_ros.pipeline.health import bounded
from gs_reasoner_ros.ros.conversions.stamps import header
from gs_reasoner_ros.ros.conversions.transforms import pose_msg


def grounded_object_msg(obj) -> GroundedObject:
    """Anything with label, center, quat, size, confidence -> GroundedObject."""
    s = np.asarray(obj.size, dtype=float)
    bbox = BoundingBox3D(center=pose_msg(obj.center, obj.quat),
                         size=Vector3(x=float(s[0]), y=float(s[1]), z=float(s[2])))
    return GroundedObject(label=str(obj.label), bbox=bbox, confidence=float(obj.confidence))


MAX_MESSAGE = 2000  # characters of a response's message (notes included)


def fill_query_response(resp, outcome, frame_id: str, now: float):
    """Fill an ~/ask or ~/ground response from a pipeline QueryOutcome (stamped with the newest
    keyframe used, else `now`)."""
    resp.success, resp.message = outcome.success, bounded(outcome.message, MAX_MESSAGE)
    resp.objects = [grounded_object_msg(o) for o in outcome.objects]
    resp.header = header(frame_id, outcome.stamp if outcome.stamp is not None else now)
    resp.keyframes_used, resp.latency_s = int(outcome.keyframes_used), float(outcome.latency_s)
    return resp
