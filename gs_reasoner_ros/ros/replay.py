"""Publish a Scene as a live RGB-D camera with TF: what `gs-reasoner demo` and the node's
integration tests feed the node with (the same topics a camera driver would use)."""
from __future__ import annotations

import time

import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage
from geometry_msgs.msg import TransformStamped

from gs_reasoner_ros.ros import conversions, qos

CAMERA_FRAME = "camera_color_optical_frame"
# Reliable on our side: compatible with the node's best-effort SENSOR_DATA readers and with
# reliable ones, and nothing is lost before the reader's queue.
CAMERA_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class ScenePlayer:
    """Publishes frames on [prefix/]color/image, depth/image, color/camera_info (relative to the
    node's namespace) and the camera pose on /tf, stamped with the time it is given. With
    transport "compressed", the images go as image_transport's compressed plugins publish them:
    JPEG colour on color/image/compressed (`color_encoding` "png" for lossless PNG) and
    compressedDepth PNG (`depth_encoding` 16UC1 or 32FC1) on depth/image/compressedDepth."""

    def __init__(self, node, world_frame: str = "map", camera_frame: str = CAMERA_FRAME,
                 color_encoding: str = "rgb8", depth_encoding: str = "16UC1", prefix: str = "",
                 transport: str = "raw"):
        self.node, self.world_frame, self.camera_frame = node, world_frame, camera_frame
        self.color_encoding, self.depth_encoding, self.transport = color_encoding, depth_encoding, transport
        p = prefix.rstrip("/") + "/" if prefix else ""
        if transport == "compressed":
            self.color = node.create_publisher(CompressedImage, p + "color/image/compressed", CAMERA_QOS)
            self.depth = node.create_publisher(CompressedImage, p + "depth/image/compressedDepth", CAMERA_QOS)
        else:
            self.color = node.create_publisher(Image, p + "color/image", CAMERA_QOS)
            self.depth = node.create_publisher(Image, p + "depth/image", CAMERA_QOS)
        self.info = node.create_publisher(CameraInfo, p + "color/camera_info", CAMERA_QOS)
        self.tf = node.create_publisher(TFMessage, "/tf", qos.TF)

    def subscribers_ready(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in (self.color, self.depth, self.info, self.tf))

    def wait_for_subscribers(self, timeout_s: float = 20.0, settle_s: float = 0.5) -> bool:
        """Wait until every topic has a subscriber, then `settle_s` more: our side sees the match
        before the reader's side does, and a best-effort reader drops what arrives before that."""
        deadline = time.monotonic() + timeout_s
        while not self.subscribers_ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        time.sleep(settle_s)
        return True

    def publish_pose(self, pose: np.ndarray, stamp: float) -> None:
        ts = TransformStamped(header=conversions.header(self.world_frame, stamp), child_frame_id=self.camera_frame,
                              transform=conversions.matrix_to_transform(pose))
        self.tf.publish(TFMessage(transforms=[ts]))

    def publish_frame(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, pose: np.ndarray,
                      stamp: float) -> None:
        """One frame: the pose first (the node waits for it anyway), then info, colour, depth."""
        self.publish_pose(pose, stamp)
        (h, w), (hc, wc) = depth.shape, rgb.shape[:2]
        k_color = np.array(K, dtype=np.float64).reshape(3, 3)  # a scene's K is the depth image's
        k_color[0] *= wc / w
        k_color[1] *= hc / h
        self.info.publish(conversions.make_camera_info(k_color, wc, hc, stamp, self.camera_frame))
        self.color.publish(self.color_msg(rgb, stamp))
        self.depth.publish(self.depth_msg(depth, stamp))

    def color_msg(self, rgb: np.ndarray, stamp: float):
        if self.transport == "compressed":
            codec = "png" if self.color_encoding == "png" else "jpeg"
            return conversions.rgb_to_compressed(rgb, stamp, self.camera_frame, codec)
        return conversions.rgb_to_image(rgb, stamp, self.camera_frame, self.color_encoding)

    def depth_msg(self, depth: np.ndarray, stamp: float):
        if self.transport == "compressed":
            return conversions.depth_to_compressed(depth, stamp, self.camera_frame, self.depth_encoding)
        return conversions.depth_to_image(depth, stamp, self.camera_frame, self.depth_encoding)

    def play(self, scene, rate_hz: float = 10.0, order=None, clock=None) -> list[float]:
        """Publish the scene's frames (in `order`, default all) at `rate_hz`, stamped with
        `clock()` seconds (default: the node's clock). Returns the stamps used."""
        clock = clock or (lambda: self.node.get_clock().now().nanoseconds * 1e-9)
        stamps = []
        period = 1.0 / rate_hz
        next_t = time.monotonic()
        for i in (range(len(scene)) if order is None else order):
            stamp = clock()
            self.publish_frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], stamp)
            stamps.append(stamp)
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
        return stamps


class ClockPublisher:
    """/clock for a node on use_sim_time, as a bag player's --clock gives it; with active False
    (the node on the wall clock) it publishes nothing."""

    def __init__(self, node, active: bool = True):
        self._pub = node.create_publisher(Clock, "/clock", 10) if active else None

    def publish(self, stamp: float) -> None:
        if self._pub is not None:
            self._pub.publish(Clock(clock=conversions.sec_to_stamp(stamp)))

