"""Raw image payloads -> numpy: colour (rgb8, bgr8, rgba8, bgra8) and depth (16UC1/mono16
millimetres, 32FC1 metres). ROS-free: `msg` is anything shaped like sensor_msgs/Image
(encoding, height, width, step, is_bigendian, data), e.g. a live message or one read from a bag
with rosbags. Every decoder validates first and raises ValueError naming the problem."""
from __future__ import annotations

import sys

import numpy as np

# encoding -> (numpy dtype, channels)
COLOR_ENCODINGS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4)}
DEPTH_ENCODINGS = {"16UC1": (np.uint16, 1), "mono16": (np.uint16, 1), "32FC1": (np.float32, 1)}
# Anything larger is a hostile or broken message, not a camera (8k x 8k is 64 Mpx).
MAX_PIXELS = 4096 * 4096


def image_array(msg, encodings: dict) -> np.ndarray:
    """Validated (H, W, C) view of an Image for one of `encodings`; ValueError otherwise."""
    if msg.encoding not in encodings:
        raise ValueError(f"unsupported encoding {msg.encoding!r}; expected one of {sorted(encodings)}")
    dtype, channels = encodings[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ValueError(f"empty image ({w}x{h})")
    if h * w > MAX_PIXELS:
        raise ValueError(f"image {w}x{h} exceeds the {MAX_PIXELS} pixel limit")
    pixel_bytes = np.dtype(dtype).itemsize * channels
    if step < w * pixel_bytes or step % np.dtype(dtype).itemsize:
        raise ValueError(f"step {step} does not fit width {w} of {msg.encoding} ({pixel_bytes} bytes/pixel)")
    if len(msg.data) != step * h:
        raise ValueError(f"data has {len(msg.data)} bytes, step*height is {step * h}")
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    rows = np.frombuffer(msg.data, dtype=dt).reshape(h, step // dt.itemsize)
    arr = rows[:, : w * channels].reshape(h, w, channels)
    return arr.astype(dtype, copy=False)  # native byte order


def image_to_rgb(msg) -> np.ndarray:
    """A colour Image (rgb8, bgr8, rgba8, bgra8) -> (H, W, 3) uint8 RGB."""
    arr = image_array(msg, COLOR_ENCODINGS)
    if msg.encoding.startswith("bgr"):
        arr = arr[..., 2::-1]
    return np.ascontiguousarray(arr[..., :3])


def image_to_depth(msg) -> np.ndarray:
    """A depth Image (16UC1/mono16 millimetres, 32FC1 metres) -> (H, W) float32 metres,
    with 0 wherever there is no valid measurement (0, NaN, inf, negative)."""
    arr = image_array(msg, DEPTH_ENCODINGS)[..., 0]
    depth = arr.astype(np.float32) * (0.001 if arr.dtype == np.uint16 else 1.0)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


if sys.byteorder != "little":  # the wire encodings above assume it; ROS 2 targets are little-endian
    raise ImportError("gs_reasoner_ros.pipeline.images supports little-endian hosts only")
