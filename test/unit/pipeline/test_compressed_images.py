"""Compressed image payloads (image_transport's compressed and compressedDepth layouts) decode to
the same arrays as the raw images; corrupt, truncated or foreign payloads are refused with a
ValueError naming the problem."""
from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import pytest

from gs_reasoner_ros.pipeline import images
from gs_reasoner_ros.synthetic import synthetic_scene


@pytest.fixture(scope="module")
def frame():
    scene, _ = synthetic_scene(seed=3, n_frames=1, width=160, height=120)
    depth = scene.depth[0].copy()
    depth[:5] = 0.0  # no measurement
    return scene.rgb[0], depth


def msg(fmt_and_data):
    fmt, data = fmt_and_data
    return SimpleNamespace(format=fmt, data=data)


def raw_depth(depth_m, encoding):
    """The raw Image the same camera would have published."""
    arr = np.round(depth_m * 1000).astype("<u2") if encoding == "16UC1" else depth_m.astype("<f4")
    return SimpleNamespace(encoding=encoding, height=arr.shape[0], width=arr.shape[1], step=arr.shape[1] * arr.itemsize,
                           is_bigendian=0, data=arr.tobytes())


def test_png_colour_is_lossless_and_jpeg_close(frame):
    rgb, _ = frame
    np.testing.assert_array_equal(images.decode_color(msg(images.encode_color(rgb, "png"))), rgb)
    jpeg = images.decode_color(msg(images.encode_color(rgb, "jpeg", quality=90)))
    assert jpeg.shape == rgb.shape and np.abs(jpeg.astype(int) - rgb.astype(int)).mean() < 3.0


def test_colour_channel_order_follows_the_format(frame):
    """compressed_image_transport stores bgr8 (OpenCV's order); a publisher that kept rgb8 says so."""
    import cv2

    rgb, _ = frame
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb))  # RGB bytes as OpenCV's "BGR"
    assert ok
    stored_rgb = SimpleNamespace(format="rgb8; png compressed rgb8", data=buf.tobytes())
    np.testing.assert_array_equal(images.decode_color(stored_rgb), rgb)
    gray = cv2.imencode(".png", rgb[..., 0])[1].tobytes()
    out = images.decode_color(SimpleNamespace(format="mono8; png compressed mono8", data=gray))
    np.testing.assert_array_equal(out, np.repeat(rgb[..., :1], 3, axis=2))


@pytest.mark.parametrize("fmt", ["16UC1; compressedDepth png", "16UC1; compressedDepth", "16UC1"])
def test_16uc1_compressed_depth_is_bit_exact(frame, fmt):
    _, depth = frame
    _, data = images.encode_depth(depth, "16UC1")
    decoded = images.decode_depth(SimpleNamespace(format=fmt, data=data))  # old and new format strings
    np.testing.assert_array_equal(decoded, images.image_to_depth(raw_depth(depth, "16UC1")))


def test_32fc1_compressed_depth_within_the_quantisation(frame):
    _, depth = frame
    decoded = images.decode_depth(msg(images.encode_depth(depth, "32FC1")))
    valid = depth > 0
    err = decoded[valid] - depth[valid]
    # inv = trunc(A/d + B) rounds A/d down by < 1, so d comes back too far by < d^2 / (A - d)
    a = images.DEPTH_QUANTIZATION * (images.DEPTH_QUANTIZATION + 1)
    assert err.min() > -1e-5 and np.all(err < depth[valid] ** 2 / (a - depth[valid]) + 1e-5)
    assert np.all(decoded[~valid] == 0)
    far = depth.copy()
    far[:, :10] = 12.0  # beyond depth_max (10 m): the publisher drops it
    assert np.all(images.decode_depth(msg(images.encode_depth(far, "32FC1")))[:, :10] == 0)


def _jpeg(frame):
    return images.encode_color(frame[0], "jpeg")[1]


def _depth(frame):
    return images.encode_depth(frame[1], "16UC1")[1]


@pytest.mark.parametrize("kind, make, error", [
    ("color", lambda f: b"", "empty"),
    ("color", lambda f: _jpeg(f)[: len(_jpeg(f)) // 2], "truncated JPEG"),
    ("color", lambda f: _jpeg(f)[:40], "truncated JPEG"),
    ("color", lambda f: images.encode_color(f[0], "png")[1][:-30], "truncated PNG"),
    ("color", lambda f: b"GIF89a" + bytes(100), "neither PNG nor JPEG"),
    ("color", lambda f: b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"IHDR", 100000, 100000) + b"IEND\xaeB`\x82",
     "pixel limit"),
    ("depth", lambda f: _depth(f)[:12], "no image after its 12-byte header"),
    ("depth", lambda f: _depth(f)[:-100], "truncated PNG"),
    ("depth", lambda f: bytes(12) + _jpeg(f), "expected uint16"),
])
def test_corrupt_payloads_are_refused(frame, kind, make, error):
    fmt = "rgb8; jpeg compressed bgr8" if kind == "color" else "16UC1; compressedDepth png"
    with pytest.raises(ValueError, match=error):
        (images.decode_color if kind == "color" else images.decode_depth)(SimpleNamespace(format=fmt, data=make(frame)))


@pytest.mark.parametrize("fmt, error", [
    ("16UC1; compressedDepth rvl", "not supported"),
    ("rgb8; jpeg compressed bgr8", "not compressedDepth"),
    ("bgr8; compressedDepth png", "expected 16UC1 or 32FC1"),
])
def test_foreign_depth_formats_are_refused(frame, fmt, error):
    with pytest.raises(ValueError, match=error):
        images.decode_depth(SimpleNamespace(format=fmt, data=_depth(frame)))


def test_bad_quantisation_header_is_refused(frame):
    _, data = images.encode_depth(frame[1], "32FC1")
    bad = struct.pack("<iff", 0, float("nan"), 1.0) + data[12:]
    with pytest.raises(ValueError, match="inverse-depth"):
        images.decode_depth(SimpleNamespace(format="32FC1; compressedDepth png", data=bad))


def test_raw_and_compressed_are_told_apart_by_their_fields(frame):
    rgb, depth = frame
    raw = SimpleNamespace(encoding="rgb8", height=rgb.shape[0], width=rgb.shape[1], step=rgb.shape[1] * 3,
                          is_bigendian=0, data=rgb.tobytes())
    np.testing.assert_array_equal(images.decode_color(raw), rgb)
    np.testing.assert_array_equal(images.decode_depth(raw_depth(depth, "16UC1")),
                                  images.decode_depth(msg(images.encode_depth(depth, "16UC1"))))
    with pytest.raises(ValueError, match="depth image, not colour"):
        images.decode_color(msg(images.encode_depth(depth, "16UC1")))
