"""Grounded objects <-> vision_msgs/Detection3DArray (~/detections), and the decoding back
(tests, planners that read the array).

One Detection3D per box, in the order the model wrote them: `id` is the box's index in the
answer (stable while the answer streams: box i keeps id "i"), one hypothesis whose `class_id`
is the label and `score` the confidence, its pose the box centre, and `bbox` the oriented box.
Every header is `world_frame` at the stamp of the newest keyframe used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PoseWithCovariance, Vector3
from vision_msgs.msg import BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesis, ObjectHypothesisWithPose

from gs_reasoner_ros.ros.conversions.stamps import header
from gs_reasoner_ros.ros.conversions.transforms import pose_msg


@dataclass
class DecodedDetection:
    """One Detection3D back as numbers (label, centre, xyzw quaternion, size, confidence)."""

    id: str
    label: str
    center: np.ndarray
    quat: np.ndarray
    size: np.ndarray
    confidence: float


def detection_array(objects, frame_id: str, stamp: float) -> Detection3DArray:
    """Objects with label, center, quat (xyzw), size, confidence (world frame) -> Detection3DArray."""
    hdr = header(frame_id, stamp)
    out = []
    for i, obj in enumerate(objects):
        pose = pose_msg(obj.center, obj.quat)
        s = np.asarray(obj.size, dtype=float)
        hypothesis = ObjectHypothesisWithPose(
            hypothesis=ObjectHypothesis(class_id=str(obj.label), score=float(obj.confidence)),
            pose=PoseWithCovariance(pose=pose))
        box = BoundingBox3D(center=pose, size=Vector3(x=float(s[0]), y=float(s[1]), z=float(s[2])))
        out.append(Detection3D(header=hdr, results=[hypothesis], bbox=box, id=str(i)))
    return Detection3DArray(header=hdr, detections=out)


def decode_detections(array: Detection3DArray) -> list[DecodedDetection]:
    """Detection3DArray -> DecodedDetection per detection (its first hypothesis; ValueError
    for a detection without one)."""
    out = []
    for det in array.detections:
        if not det.results:
            raise ValueError(f"detection {det.id!r} has no hypothesis")
        hyp, c, q = det.results[0].hypothesis, det.bbox.center.position, det.bbox.center.orientation
        out.append(DecodedDetection(det.id, hyp.class_id, np.array([c.x, c.y, c.z]), np.array([q.x, q.y, q.z, q.w]),
                                    np.array([det.bbox.size.x, det.bbox.size.y, det.bbox.size.z]), float(hyp.score)))
    return out
