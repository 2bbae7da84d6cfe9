"""Message <-> numpy conversions for the node (images, camera info, TF, clouds, objects).

Written with numpy only: cv_bridge from PyPI is broken with numpy 2 (16UC1 decodes as
uint8), and sensor_msgs_py is not on PyPI. Every decoder validates the message first and
raises ValueError naming the problem, so a callback can reject a bad message and go on.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from gs_reasoner_ros import geometry
from gs_reasoner_ros.msg import BoundingBox3D, GroundedObject

# encoding -> (numpy dtype, channels)
COLOR_ENCODINGS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4)}
DEPTH_ENCODINGS = {"16UC1": (np.uint16, 1), "mono16": (np.uint16, 1), "32FC1": (np.float32, 1)}
# Anything larger is a hostile or broken message, not a camera (8k x 8k is 64 Mpx).
MAX_PIXELS = 4096 * 4096


# ---- time ---------------------------------------------------------------------------

def stamp_to_sec(stamp) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    """float seconds -> builtin_interfaces/Time (rounded to the nanosecond). Whole seconds
    are split off first: epoch times in nanoseconds exceed float64's 53-bit precision."""
    sec = math.floor(t)
    ns = int(round((t - sec) * 1e9))
    if ns >= 1_000_000_000:
        sec, ns = sec + 1, ns - 1_000_000_000
    return Time(sec=int(sec), nanosec=ns)


def header(frame_id: str, t: float) -> Header:
    return Header(frame_id=frame_id, stamp=sec_to_stamp(t))


# ---- images -------------------------------------------------------------------------

def image_array(msg: Image, encodings: dict) -> np.ndarray:
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


def image_to_rgb(msg: Image) -> np.ndarray:
    """A colour Image (rgb8, bgr8, rgba8, bgra8) -> (H, W, 3) uint8 RGB."""
    arr = image_array(msg, COLOR_ENCODINGS)
    if msg.encoding.startswith("bgr"):
        arr = arr[..., 2::-1]
    return np.ascontiguousarray(arr[..., :3])


def image_to_depth(msg: Image) -> np.ndarray:
    """A depth Image (16UC1/mono16 millimetres, 32FC1 metres) -> (H, W) float32 metres,
    with 0 wherever there is no valid measurement (0, NaN, inf, negative)."""
    arr = image_array(msg, DEPTH_ENCODINGS)[..., 0]
    depth = arr.astype(np.float32) * (0.001 if arr.dtype == np.uint16 else 1.0)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


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


# ---- camera info ----------------------------------------------------------------------

def camera_info_to_k(msg: CameraInfo) -> np.ndarray:
    """CameraInfo -> validated 3x3 pinhole K (positive finite focal lengths)."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(k)):
        raise ValueError("camera_info K has NaN or inf")
    fx, fy = k[0, 0], k[1, 1]
    if fx <= 0 or fy <= 0:
        raise ValueError(f"camera_info focal lengths must be positive, got fx={fx}, fy={fy}")
    return k


def make_camera_info(k: np.ndarray, width: int, height: int, stamp: float, frame_id: str) -> CameraInfo:
    """A plain-pinhole CameraInfo (no distortion) for replay."""
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    p = np.zeros((3, 4))
    p[:, :3] = k
    return CameraInfo(header=header(frame_id, stamp), width=int(width), height=int(height),
                      distortion_model="plumb_bob", d=[0.0] * 5, k=k.ravel().tolist(),
                      r=np.eye(3).ravel().tolist(), p=p.ravel().tolist())


@dataclass
class RgbdFrame:
    """One synced, decoded RGB-D observation (not yet posed)."""

    rgb: np.ndarray  # (H, W, 3) uint8, resampled to the depth size
    depth: np.ndarray  # (H, W) float32 metres
    k: np.ndarray  # 3x3 of the depth image
    stamp: float
    frame_id: str


def decode_rgbd(color: Image, depth: Image, info: CameraInfo) -> RgbdFrame:
    """Decode a synced triplet. The depth is registered to the colour camera (DESIGN.md),
    so K from colour camera_info is rescaled to the depth resolution and the colour image
    resampled to it; differing aspect ratios are rejected."""
    rgb = image_to_rgb(color)
    dep = image_to_depth(depth)
    k = camera_info_to_k(info)
    (hc, wc), (hd, wd) = rgb.shape[:2], dep.shape
    if abs(hc * wd - wc * hd) > max(hd, wd):
        raise ValueError(f"colour {wc}x{hc} and depth {wd}x{hd} differ in aspect ratio")
    wi, hi = (int(info.width), int(info.height)) if info.width and info.height else (wc, hc)
    if abs(hi * wc - wi * hc) > max(hc, wc):
        raise ValueError(f"camera_info {wi}x{hi} does not match the colour image {wc}x{hc}")
    if (wi, hi) != (wd, hd):
        k = k.copy()
        k[0] *= wd / wi
        k[1] *= hd / hi
    if (hc, wc) != (hd, wd):
        import cv2

        rgb = cv2.resize(rgb, (wd, hd), interpolation=cv2.INTER_AREA if wc > wd else cv2.INTER_LINEAR)
    frame_id = depth.header.frame_id or color.header.frame_id
    if not frame_id:
        raise ValueError("images carry no header.frame_id, so the camera pose cannot be looked up")
    return RgbdFrame(rgb, dep, k, stamp_to_sec(depth.header.stamp), frame_id)


# ---- transforms ---------------------------------------------------------------------

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


def grounded_object_msg(obj) -> GroundedObject:
    """Anything with label, center, quat, size, confidence -> GroundedObject."""
    s = np.asarray(obj.size, dtype=float)
    bbox = BoundingBox3D(center=pose_msg(obj.center, obj.quat),
                         size=Vector3(x=float(s[0]), y=float(s[1]), z=float(s[2])))
    return GroundedObject(label=str(obj.label), bbox=bbox, confidence=float(obj.confidence))


# ---- point clouds ---------------------------------------------------------------------

_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])


def cloud_msg(points: np.ndarray, colors: np.ndarray, stamp: float, frame_id: str) -> PointCloud2:
    """(N,3) float points + (N,3) uint8 colours -> unorganised PointCloud2 with x, y, z and
    the PCL-style packed rgb (0x00RRGGBB bits, declared FLOAT32 so RViz and PCL read it)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(points) != len(colors):
        raise ValueError(f"{len(points)} points but {len(colors)} colours")
    buf = np.empty(len(points), dtype=_CLOUD_DTYPE)
    buf["x"], buf["y"], buf["z"] = points.T
    c = colors.astype(np.uint32)
    buf["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, n in enumerate(("x", "y", "z", "rgb"))]
    return PointCloud2(header=header(frame_id, stamp), height=1, width=len(points), fields=fields,
                       is_bigendian=False, point_step=16, row_step=16 * len(points),
                       data=buf.tobytes(), is_dense=True)


_FIELD_TYPES = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
                PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8"}


def cloud_to_arrays(msg: PointCloud2) -> tuple[np.ndarray, np.ndarray | None]:
    """PointCloud2 -> ((N,3) float32 xyz, (N,3) uint8 rgb or None) for any field layout."""
    byteorder = ">" if msg.is_bigendian else "<"
    fields = {f.name: f for f in msg.fields}
    if not {"x", "y", "z"} <= fields.keys():
        raise ValueError(f"cloud has no x, y, z fields (has {sorted(fields)})")
    names = [k for k in ("x", "y", "z", "rgb") if k in fields]
    for k in names:
        if fields[k].datatype not in _FIELD_TYPES:
            raise ValueError(f"cloud field {k!r} has unknown datatype {fields[k].datatype}")
    h, w, step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    formats = [byteorder + _FIELD_TYPES[fields[k].datatype] for k in names]
    end = max(fields[k].offset + np.dtype(f).itemsize for k, f in zip(names, formats))
    if h * w and (step < end or row_step < w * step or len(msg.data) < h * row_step):
        raise ValueError(f"cloud layout does not fit: {w}x{h} points, point_step {step}, "
                         f"row_step {row_step}, {len(msg.data)} bytes, fields end at byte {end}")
    dtype = np.dtype({"names": names, "formats": formats,
                      "offsets": [fields[k].offset for k in names], "itemsize": max(step, end)})
    raw = np.frombuffer(msg.data, dtype=np.uint8)[: h * row_step].reshape(h, row_step)[:, : w * step]
    pts = np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype=dtype) if h * w else np.zeros(0, dtype)
    xyz = np.stack([pts["x"], pts["y"], pts["z"]], axis=1).astype(np.float32)
    if "rgb" not in names:
        return xyz, None
    field = np.ascontiguousarray(pts["rgb"])
    packed = field.view(byteorder + "u4") if field.dtype.itemsize == 4 else field.astype(np.uint32)
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return xyz, rgb


if sys.byteorder != "little":  # the wire encodings above assume it; ROS 2 targets are little-endian
    raise ImportError("gs_reasoner_ros.ros.conversions supports little-endian hosts only")
