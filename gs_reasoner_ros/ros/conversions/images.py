"""sensor_msgs/Image and CompressedImage <-> numpy: decoding is gs_reasoner_ros.pipeline.images
(it reads any Image- or CompressedImage-shaped message); this module encodes numpy images as
messages (replay, tests)."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from gs_reasoner_ros.pipeline.images import encode_color, encode_depth

from gs_reasoner_ros.ros.conversions.stamps import header


def rgb_to_image(rgb: np.ndarray, stamp: float, frame_id: str, encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 RGB -> Image in rgb8 or bgr8."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"cannot encode colour as {encoding!r}")
    data = rgb[..., ::-1] if encoding == "bgr8" else rgb
    h, w = rgb.shape[:2]
    return Image(header=header(frame_id, stamp), height=h, width=w, encoding=encoding,
                 is_bigendian=0, step=w * 3, data=np.ascontiguousarray(data).tobytes())


def depth_to_image(depth_m: np.ndarray, stamp: float, frame_id: str, encoding: str = "16UC1") -> Image:
    """(H, W) metres -> Image in 16UC1 (millimetres, 0 = none) or 32FC1 (metres)."""
    depth_m = np.nan_to_num(np.asarray(depth_m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if depth_m.ndim != 2:
        raise ValueError(f"expected (H, W) depth, got {depth_m.shape}")
    if encoding == "16UC1":
        data = np.clip(np.round(depth_m * 1000.0), 0, 65535).astype("<u2")
    elif encoding == "32FC1":
        data = depth_m.astype("<f4")
    else:
        raise ValueError(f"cannot encode depth as {encoding!r}")
    h, w = depth_m.shape
    return Image(header=header(frame_id, stamp), height=h, width=w, encoding=encoding,
                 is_bigendian=0, step=w * data.itemsize, data=data.tobytes())



def rgb_to_compressed(rgb: np.ndarray, stamp: float, frame_id: str, codec: str = "jpeg",
                      quality: int = 90) -> CompressedImage:
    """(H, W, 3) uint8 RGB -> CompressedImage as compressed_image_transport publishes it
    (topic `.../image/compressed`)."""
    fmt, data = encode_color(rgb, codec, quality)
    return CompressedImage(header=header(frame_id, stamp), format=fmt, data=data)


def depth_to_compressed(depth_m: np.ndarray, stamp: float, frame_id: str, encoding: str = "16UC1") -> CompressedImage:
    """(H, W) metres -> compressedDepth CompressedImage (16UC1 millimetres or 32FC1 quantised
    inverse depth, PNG), as compressed_depth_image_transport publishes it (`.../image/compressedDepth`)."""
    fmt, data = encode_depth(depth_m, encoding)
    return CompressedImage(header=header(frame_id, stamp), format=fmt, data=data)
