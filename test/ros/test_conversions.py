"""Message <-> numpy conversions: round trips for every encoding, malformed input rejected."""
import numpy as np
import pytest

pytest.importorskip("rclpy")
from hypothesis import given, settings, strategies as st  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402

from gs_reasoner_ros import geometry  # noqa: E402
from gs_reasoner_ros.ros import conversions as cv  # noqa: E402

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
DEPTH = RNG.uniform(0.3, 5.0, (6, 8)).astype(np.float32)
K = np.array([[7.0, 0, 4.0], [0, 7.0, 3.0], [0, 0, 1]])


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_colour_round_trip(encoding):
    msg = cv.rgb_to_image(RGB, 12.5, "cam", encoding)
    assert msg.encoding == encoding and msg.step == 24
    if encoding == "bgr8":  # the bytes on the wire really are blue first
        assert bytes(msg.data[:3]) == bytes(RGB[0, 0, ::-1])
    np.testing.assert_array_equal(cv.image_to_rgb(msg), RGB)


@pytest.mark.parametrize("encoding", ["rgba8", "bgra8"])
def test_colour_with_alpha_and_padded_rows(encoding):
    h, w, step = 6, 8, 8 * 4 + 5  # 5 bytes of row padding
    rows = np.zeros((h, step), np.uint8)
    px = np.concatenate([RGB if encoding == "rgba8" else RGB[..., ::-1], np.full((h, w, 1), 7, np.uint8)], axis=2)
    rows[:, : w * 4] = px.reshape(h, -1)
    msg = Image(height=h, width=w, encoding=encoding, step=step, data=rows.tobytes())
    np.testing.assert_array_equal(cv.image_to_rgb(msg), RGB)


def test_depth_16uc1_is_millimetres_and_32fc1_metres():
    mm = cv.depth_to_image(DEPTH, 0.0, "cam", "16UC1")
    m = cv.depth_to_image(DEPTH, 0.0, "cam", "32FC1")
    # 16UC1 keeps millimetres: exact to 0.5 mm
    np.testing.assert_allclose(cv.image_to_depth(mm), DEPTH, atol=0.0005 + 1e-6)
    np.testing.assert_array_equal(cv.image_to_depth(m), DEPTH)
    raw = np.frombuffer(bytes(mm.data), "<u2").reshape(6, 8)
    assert raw[0, 0] == round(DEPTH[0, 0] * 1000)


def test_big_endian_depth_is_decoded():
    data = np.array([[1500, 0], [65535, 20]], dtype=">u2")
    msg = Image(height=2, width=2, encoding="16UC1", is_bigendian=1, step=4, data=data.tobytes())
    np.testing.assert_allclose(cv.image_to_depth(msg), [[1.5, 0.0], [65.535, 0.02]], rtol=1e-6)


def test_invalid_depth_values_become_zero():
    d = np.array([[np.nan, np.inf], [-1.0, 2.0]], np.float32)
    msg = Image(height=2, width=2, encoding="32FC1", step=8, data=d.astype("<f4").tobytes())
    np.testing.assert_array_equal(cv.image_to_depth(msg), [[0, 0], [0, 2.0]])


@pytest.mark.parametrize("change, error", [
    (dict(encoding="yuv422"), "unsupported encoding"),
    (dict(width=0), "empty image"),
    (dict(height=0), "empty image"),
    (dict(step=10), "step"),
    (dict(data=bytes(10)), "data has 10 bytes"),
    (dict(width=100000, height=100000), "pixel limit"),
])
def test_malformed_colour_images_are_refused(change, error):
    msg = cv.rgb_to_image(RGB, 0.0, "cam")
    for k, v in change.items():
        setattr(msg, k, v)
    with pytest.raises(ValueError, match=error):
        cv.image_to_rgb(msg)


def test_depth_encoding_is_not_accepted_as_colour():
    with pytest.raises(ValueError, match="unsupported encoding '16UC1'"):
        cv.image_to_rgb(cv.depth_to_image(DEPTH, 0.0, "cam"))


def _triplet(rgb=RGB, depth=DEPTH, k=K, info_size=None):
    info_w, info_h = info_size or (rgb.shape[1], rgb.shape[0])
    return (cv.rgb_to_image(rgb, 3.0, "cam"), cv.depth_to_image(depth, 3.0, "cam"),
            cv.make_camera_info(k, info_w, info_h, 3.0, "cam"))


def test_decode_rgbd_same_size():
    f = cv.decode_rgbd(*_triplet())
    np.testing.assert_array_equal(f.rgb, RGB)
    np.testing.assert_allclose(f.k, K)
    assert f.stamp == 3.0 and f.frame_id == "cam"


def test_decode_rgbd_rescales_k_and_colour_to_the_depth_size():
    big_rgb = np.repeat(np.repeat(RGB, 2, 0), 2, 1)  # 16x12 colour, 8x6 depth
    k_big = K * [[2], [2], [1]]
    f = cv.decode_rgbd(*_triplet(rgb=big_rgb, k=k_big))
    assert f.rgb.shape == (6, 8, 3)
    np.testing.assert_array_equal(f.rgb, RGB)  # 2x2 blocks of one colour average to it
    np.testing.assert_allclose(f.k, K)


@pytest.mark.parametrize("kwargs, error", [
    (dict(depth=np.ones((8, 8), np.float32)), "aspect ratio"),
    (dict(k=np.diag([0.0, 7.0, 1.0])), "focal lengths must be positive"),
    (dict(k=np.diag([-7.0, 7.0, 1.0])), "focal lengths must be positive"),
    (dict(info_size=(10, 10)), "camera_info says 10x10"),
    (dict(info_size=(4, 3)), "camera_info says 4x3"),  # same aspect, half the size: K for another image
])
def test_decode_rgbd_refuses_inconsistent_frames(kwargs, error):
    with pytest.raises(ValueError, match=error):
        cv.decode_rgbd(*_triplet(**kwargs))


def test_decode_rgbd_needs_a_frame_id():
    color, depth, info = _triplet()
    color.header.frame_id = depth.header.frame_id = info.header.frame_id = ""
    with pytest.raises(ValueError, match="frame_id"):
        cv.decode_rgbd(color, depth, info)


def test_stamp_round_trip_to_the_nanosecond():
    t = cv.sec_to_stamp(12.000000007)
    assert (t.sec, t.nanosec) == (12, 7)
    t = cv.sec_to_stamp(1700000000.25)
    assert (t.sec, t.nanosec) == (1700000000, 250000000)
    assert cv.stamp_to_sec(t) == 1700000000.25


def test_transform_round_trip_and_validation():
    T = geometry.make_transform([1.0, -2.0, 0.5], [0.1, 0.2, 0.3, 0.9] / np.linalg.norm([0.1, 0.2, 0.3, 0.9]))
    np.testing.assert_allclose(cv.transform_to_matrix(cv.matrix_to_transform(T)), T, atol=1e-12)
    bad = cv.matrix_to_transform(T)
    bad.rotation.w = 5.0
    with pytest.raises(ValueError, match="norm"):
        cv.transform_to_matrix(bad)
    bad.rotation.w, bad.translation.x = 1.0, float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cv.transform_to_matrix(bad)


def test_point_cloud_round_trip():
    pts = RNG.normal(size=(50, 3)).astype(np.float32)
    cols = RNG.integers(0, 256, (50, 3), dtype=np.uint8)
    msg = cv.cloud_msg(pts, cols, 4.0, "map")
    assert msg.header.frame_id == "map" and msg.width == 50 and msg.point_step == 16
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"]
    xyz, rgb = cv.cloud_to_arrays(msg)
    np.testing.assert_array_equal(xyz, pts)
    np.testing.assert_array_equal(rgb, cols)
    # the packed rgb is PCL's 0x00RRGGBB
    packed = np.frombuffer(bytes(msg.data), np.uint32).reshape(50, 4)[:, 3]
    assert packed[0] == (int(cols[0, 0]) << 16 | int(cols[0, 1]) << 8 | int(cols[0, 2]))


def test_foreign_cloud_layout_is_decoded():
    # a cloud with padding and fields in another order, like many drivers send
    dt = np.dtype({"names": ["rgb", "x", "y", "z"], "formats": ["<u4", "<f4", "<f4", "<f4"],
                   "offsets": [0, 8, 12, 16], "itemsize": 24})
    arr = np.zeros(3, dt)
    arr["x"], arr["y"], arr["z"], arr["rgb"] = [1, 2, 3], [4, 5, 6], [7, 8, 9], [0xFF0080, 0, 0x010203]
    fields = [PointField(name="rgb", offset=0, datatype=PointField.UINT32, count=1)] + [
        PointField(name=n, offset=o, datatype=PointField.FLOAT32, count=1) for n, o in (("x", 8), ("y", 12), ("z", 16))]
    msg = PointCloud2(height=1, width=3, fields=fields, point_step=24, row_step=72, data=arr.tobytes())
    xyz, rgb = cv.cloud_to_arrays(msg)
    np.testing.assert_array_equal(xyz, [[1, 4, 7], [2, 5, 8], [3, 6, 9]])
    np.testing.assert_array_equal(rgb[0], [255, 0, 128])
    np.testing.assert_array_equal(rgb[2], [1, 2, 3])


def test_truncated_cloud_is_refused():
    msg = cv.cloud_msg(np.zeros((4, 3)), np.zeros((4, 3), np.uint8), 0.0, "map")
    msg.data = bytes(msg.data)[:30]
    with pytest.raises(ValueError, match="does not fit"):
        cv.cloud_to_arrays(msg)


@settings(max_examples=150, deadline=None)
@given(encoding=st.sampled_from(["rgb8", "bgr8", "rgba8", "16UC1", "32FC1", "mono16", "bayer", ""]),
       width=st.integers(0, 9), height=st.integers(0, 9), step=st.integers(0, 40),
       data=st.binary(max_size=400), bigendian=st.integers(0, 1))
def test_random_images_either_decode_or_raise_value_error(encoding, width, height, step, data, bigendian):
    msg = Image(height=height, width=width, encoding=encoding, step=step, data=data, is_bigendian=bigendian)
    for decode in (cv.image_to_rgb, cv.image_to_depth):
        try:
            out = decode(msg)
        except ValueError:
            continue
        assert out.shape[:2] == (height, width)
        if decode is cv.image_to_depth:
            assert np.all(np.isfinite(out)) and np.all(out >= 0)


@settings(max_examples=100, deadline=None)
@given(width=st.integers(0, 5), height=st.integers(0, 3), point_step=st.integers(0, 32),
       row_step=st.integers(0, 120), data=st.binary(max_size=300),
       offsets=st.lists(st.integers(0, 40), min_size=4, max_size=4),
       types=st.lists(st.integers(0, 9), min_size=4, max_size=4))
def test_random_clouds_either_decode_or_raise_value_error(width, height, point_step, row_step, data, offsets, types):
    fields = [PointField(name=n, offset=o, datatype=t, count=1) for n, o, t in zip("xyz", offsets, types)]
    fields.append(PointField(name="rgb", offset=offsets[3], datatype=types[3], count=1))
    msg = PointCloud2(height=height, width=width, fields=fields, point_step=point_step, row_step=row_step, data=data)
    try:
        xyz, rgb = cv.cloud_to_arrays(msg)
    except ValueError:
        return
    assert xyz.shape == (width * height, 3)


def test_camera_info_with_nan_is_refused():
    info = CameraInfo(k=[float("nan")] * 9)
    with pytest.raises(ValueError, match="NaN"):
        cv.camera_info_to_k(info)
