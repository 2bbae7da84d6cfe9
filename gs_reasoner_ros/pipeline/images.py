"""Image payloads -> numpy: colour (rgb8, bgr8, rgba8, bgra8) and depth (16UC1/mono16
millimetres, 32FC1 metres), raw or compressed as image_transport's plugins write them. ROS-free:
`msg` is anything shaped like sensor_msgs/Image (encoding, height, width, step, is_bigendian,
data) or sensor_msgs/CompressedImage (format, data), e.g. a live message or one read from a bag
with rosbags; decode_color/decode_depth tell them apart by their fields. Every decoder validates
first and raises ValueError naming the problem.

Compressed layouts (image_transport_plugins):
- colour (compressed_image_transport): format "<encoding>; jpeg compressed <bgr8|rgb8|mono8>" (or
  png), the payload a plain JPEG/PNG file; older publishers write only "jpeg"/"png".
- depth (compressed_depth_image_transport): format "<16UC1|32FC1>; compressedDepth[ png]"; the
  payload is a 12-byte header (int32 format enum, 0 = inverse depth; float32 depthQuantA,
  depthQuantB; little-endian) and a PNG of uint16. 16UC1 is the millimetre image as it was;
  32FC1 is quantised inverse depth, inv = uint16(A / d + B) (0 = no depth), decoded as
  d = A / (inv - B). The publisher's defaults, depth_quantization z0 = 100 and depth_max = 10 m,
  give A = z0 (z0 + 1) = 10100 and B = 1 - A / depth_max; the error is below d^2 / A
  (0.1 mm at 1 m, 2.5 mm at 5 m). The RVL payload of newer publishers is refused.
"""
from __future__ import annotations

import struct
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


# ---- compressed -----------------------------------------------------------------------

DEPTH_HEADER = struct.Struct("<iff")  # compressed_depth_image_transport's ConfigHeader
INV_DEPTH = 0  # its compressionFormat enum: quantised inverse depth (the only one)
DEPTH_QUANTIZATION, DEPTH_MAX = 100.0, 10.0  # compressed_depth_image_transport's parameter defaults


def is_compressed(msg) -> bool:
    """A CompressedImage-shaped message (format, data) rather than a raw Image."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def decode_color(msg) -> np.ndarray:
    """A colour Image or CompressedImage -> (H, W, 3) uint8 RGB."""
    return compressed_to_rgb(msg) if is_compressed(msg) else image_to_rgb(msg)


def decode_depth(msg) -> np.ndarray:
    """A depth Image or compressedDepth CompressedImage -> (H, W) float32 metres, 0 = none."""
    return compressed_depth_to_depth(msg) if is_compressed(msg) else image_to_depth(msg)


def compressed_to_rgb(msg) -> np.ndarray:
    """A JPEG or PNG colour CompressedImage -> (H, W, 3) uint8 RGB."""
    import cv2

    fmt = str(msg.format)
    if "compressedDepth" in fmt:
        raise ValueError(f"format {fmt!r} is a depth image, not colour")
    data = _payload(msg.data)
    _check_size(_coded_size(data))
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"corrupt or truncated {_codec(data)} colour payload ({len(data)} bytes)")
    if arr.dtype != np.uint8:
        raise ValueError(f"colour payload is {arr.dtype}; only 8-bit colour is supported")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    # OpenCV decodes to BGR(A); a publisher that compressed an rgb8 image as "rgb8" stored RGB.
    rgb_stored = fmt.split("compressed")[-1].strip().startswith("rgb")
    return np.ascontiguousarray(arr[..., :3] if rgb_stored else arr[..., 2::-1])


def compressed_depth_to_depth(msg) -> np.ndarray:
    """A compressedDepth CompressedImage (16UC1 or 32FC1, PNG) -> (H, W) float32 metres, 0 = none."""
    import cv2

    fmt = str(msg.format)
    encoding, _, codec = fmt.partition(";")
    encoding, codec = encoding.strip(), codec.strip()
    if codec and not codec.startswith("compressedDepth"):
        raise ValueError(f"format {fmt!r} is not compressedDepth")
    if codec.split()[1:] not in ([], ["png"]):
        raise ValueError(f"compressedDepth {codec.split()[1]!r} is not supported (only png)")
    if encoding not in ("16UC1", "mono16", "32FC1"):
        raise ValueError(f"compressedDepth of {encoding!r}; expected 16UC1 or 32FC1")
    data = _payload(msg.data)
    if len(data) <= DEPTH_HEADER.size:
        raise ValueError(f"compressedDepth payload of {len(data)} bytes has no image after its 12-byte header")
    kind, quant_a, quant_b = DEPTH_HEADER.unpack_from(data)
    png = data[DEPTH_HEADER.size:]
    _check_size(_coded_size(png))
    arr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.dtype != np.uint16:
        raise ValueError(f"corrupt or truncated compressedDepth PNG ({len(png)} bytes)"
                         if arr is None else f"compressedDepth PNG is {arr.dtype} {arr.shape}, expected uint16 (H, W)")
    if encoding != "32FC1":
        return arr.astype(np.float32) * np.float32(0.001)
    if kind != INV_DEPTH or not (np.isfinite(quant_a) and np.isfinite(quant_b)) or quant_a <= 0:
        raise ValueError(f"compressedDepth header ({kind}, {quant_a}, {quant_b}) is not an inverse-depth quantisation")
    inv = arr.astype(np.float32)
    with np.errstate(divide="ignore"):
        depth = np.float32(quant_a) / (inv - np.float32(quant_b))
    depth[(arr == 0) | ~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def encode_color(rgb: np.ndarray, codec: str = "jpeg", quality: int = 90) -> tuple[str, bytes]:
    """(H, W, 3) uint8 RGB -> (format, data) of a CompressedImage, as compressed_image_transport
    writes an rgb8 image (stored as bgr8)."""
    import cv2

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    if codec not in ("jpeg", "png"):
        raise ValueError(f"colour codec must be jpeg or png, got {codec!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode("." + ("jpg" if codec == "jpeg" else "png"), np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise ValueError(f"{codec} encoding failed")
    return f"rgb8; {codec} compressed bgr8", buf.tobytes()


def encode_depth(depth_m: np.ndarray, encoding: str = "16UC1", depth_max: float = DEPTH_MAX,
                 quantization: float = DEPTH_QUANTIZATION) -> tuple[str, bytes]:
    """(H, W) metres -> (format, data) of a compressedDepth CompressedImage: 16UC1 millimetres
    (depths beyond depth_max dropped, as the publisher does) or 32FC1 quantised inverse depth."""
    import cv2

    depth = np.nan_to_num(np.asarray(depth_m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if depth.ndim != 2:
        raise ValueError(f"expected (H, W) depth, got {depth.shape}")
    quant_a = quant_b = 0.0
    if encoding == "16UC1":
        image = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
        image[image > np.uint16(min(depth_max * 1000.0, 65535))] = 0
    elif encoding == "32FC1":
        quant_a = np.float32(quantization * (quantization + 1.0))
        quant_b = np.float32(1.0 - quant_a / np.float32(depth_max))
        valid = (depth > 0) & (depth < depth_max)
        inv = np.zeros(depth.shape, np.float32)
        inv[valid] = quant_a / depth[valid] + quant_b
        image = np.clip(inv, 0, 65535).astype(np.uint16)  # truncation, as the C++ cast
    else:
        raise ValueError(f"compressedDepth encodes 16UC1 or 32FC1, not {encoding!r}")
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("png encoding failed")
    return f"{encoding}; compressedDepth png", DEPTH_HEADER.pack(INV_DEPTH, quant_a, quant_b) + buf.tobytes()


def _payload(data) -> bytes:
    data = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not data:
        raise ValueError("empty compressed payload")
    return data


def _codec(data: bytes) -> str:
    return "PNG" if data[:8] == b"\x89PNG\r\n\x1a\n" else "JPEG" if data[:2] == b"\xff\xd8" else "unknown"


def _coded_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header, read before decoding, so a hostile header
    cannot make the decoder allocate gigabytes; ValueError when neither is recognisable."""
    codec = _codec(data)
    # OpenCV decodes a cut-off JPEG into a grey-filled image without complaint: check the end too.
    if codec == "PNG" and not data.endswith(b"IEND\xaeB`\x82"):
        raise ValueError(f"truncated PNG ({len(data)} bytes, no IEND chunk)")
    if codec == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ValueError(f"truncated JPEG ({len(data)} bytes, no end-of-image marker)")
    if codec == "PNG":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("truncated PNG header")
        return struct.unpack(">II", data[16:24])
    if codec == "JPEG":
        i = 2
        while i + 9 <= len(data):  # walk the marker segments to the frame header (SOFn)
            if data[i] != 0xFF:
                raise ValueError("corrupt JPEG marker stream")
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return width, height
            i += 2 + length
        raise ValueError("truncated JPEG: no frame header")
    raise ValueError(f"payload is neither PNG nor JPEG (starts {data[:4].hex()})")


def _check_size(size: tuple[int, int]) -> None:
    w, h = size
    if w == 0 or h == 0:
        raise ValueError(f"empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ValueError(f"image {w}x{h} exceeds the {MAX_PIXELS} pixel limit")


if sys.byteorder != "little":  # the wire encodings above assume it; ROS 2 targets are little-endian
    raise ImportError("gs_reasoner_ros.pipeline.images supports little-endian hosts only")
