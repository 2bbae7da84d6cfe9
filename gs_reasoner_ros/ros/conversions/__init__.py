"""Message <-> numpy conversions for the node, one module per message family: stamps (Time,
Header), images (Image), camera_info (CameraInfo and the synced RGB-D set), transforms
(Transform, Pose), objects (GroundedObject), point_clouds (PointCloud2), markers (MarkerArray),
detections (vision_msgs/Detection3DArray).

Written with numpy only: cv_bridge from PyPI is broken with numpy 2 (16UC1 decodes as uint8),
and sensor_msgs_py is not on PyPI. Decoders validate first and raise ValueError naming the
problem, so a callback can reject a bad message and go on. Image decoding itself is ROS-free
(gs_reasoner_ros.pipeline.images: bag readers use it too). The names below are the ones the
node and the tools use.
"""
from gs_reasoner_ros.ros.conversions.camera_info import camera_info_to_k, decode_rgbd, make_camera_info
from gs_reasoner_ros.pipeline.images import (COLOR_ENCODINGS, DEPTH_ENCODINGS, MAX_PIXELS, image_array, image_to_depth,
                                             image_to_rgb)
from gs_reasoner_ros.ros.conversions.images import depth_to_compressed, depth_to_image, rgb_to_compressed, rgb_to_image
from gs_reasoner_ros.ros.conversions.objects import fill_query_response, grounded_object_msg
from gs_reasoner_ros.ros.conversions.point_clouds import cloud_msg, cloud_to_arrays
from gs_reasoner_ros.ros.conversions.stamps import header, sec_to_stamp, stamp_to_sec
from gs_reasoner_ros.ros.conversions.transforms import matrix_to_transform, pose_msg, transform_to_matrix

__all__ = ["COLOR_ENCODINGS", "DEPTH_ENCODINGS", "MAX_PIXELS", "camera_info_to_k", "cloud_msg", "cloud_to_arrays",
           "decode_rgbd", "depth_to_compressed", "depth_to_image", "fill_query_response", "grounded_object_msg", "header", "image_array", "image_to_depth",
           "image_to_rgb", "make_camera_info", "matrix_to_transform", "pose_msg", "rgb_to_compressed", "rgb_to_image", "sec_to_stamp",
           "stamp_to_sec", "transform_to_matrix"]
