"""geometry_msgs/Transform and Pose <-> 4x4 matrices and (centre, quaternion)."""
from __future__ import annotations

import math

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3

from gs_reasoner_ros import geometry


def transform_to_matrix(tf: Transform) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4 (ValueError on non-finite or non-unit rotation)."""
    t = [tf.translation.x, tf.translation.y, tf.translation.z]
    q = [tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w]
    if not all(math.isfinite(v) for v in t + q):
        raise ValueError("transform has NaN or inf")
    n = math.sqrt(sum(v * v for v in q))
    if abs(n - 1.0) > 1e-2:
        raise ValueError(f"rotation quaternion has norm {n:.4f}, not 1")
    return geometry.make_transform(np.array(t), np.array(q) / n)


def matrix_to_transform(m: np.ndarray) -> Transform:
    m = np.asarray(m, dtype=np.float64)
    q = geometry.quat_from_matrix(m[:3, :3])
    return Transform(translation=Vector3(x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3])),
                     rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def pose_msg(center, quat_xyzw) -> Pose:
    c, q = np.asarray(center, dtype=float), np.asarray(quat_xyzw, dtype=float)
    return Pose(position=Point(x=float(c[0]), y=float(c[1]), z=float(c[2])),
                orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
