"""The node's TF buffer: interpolation, chains, statics, extrapolation, bad input."""
import numpy as np
import pytest

from gs_reasoner_ros import geometry
from gs_reasoner_ros.pipeline.tf_tree import ConnectivityError, ExtrapolationError, TfBuffer, slerp


def yaw_quat(deg):
    a = np.radians(deg) / 2
    return np.array([0, 0, np.sin(a), np.cos(a)])


@pytest.fixture
def buf():
    """map -> odom (static offset), odom -> base_link moving along x and turning, base_link ->
    camera (static), plus an unrelated world -> other tree."""
    b = TfBuffer(cache_time_s=10.0)
    b.set_transform("map", "odom", 0.0, [10, 0, 0], [0, 0, 0, 1], static=True)
    b.set_transform("odom", "base_link", 1.0, [0, 0, 0], yaw_quat(0))
    b.set_transform("odom", "base_link", 2.0, [2, 0, 0], yaw_quat(90))
    b.set_transform("base_link", "camera", 0.0, [0.5, 0, 1], [0, 0, 0, 1], static=True)
    b.set_transform("world", "other", 1.0, [0, 0, 0], [0, 0, 0, 1])
    return b


def test_interpolates_translation_linearly_and_rotation_by_slerp(buf):
    T = buf.lookup("odom", "base_link", 1.25)
    np.testing.assert_allclose(T[:3, 3], [0.5, 0, 0], atol=1e-12)
    expected = geometry.matrix_from_quat(yaw_quat(22.5))  # a quarter of 90 degrees
    np.testing.assert_allclose(T[:3, :3], expected, atol=1e-12)


def test_chain_through_static_and_dynamic_edges(buf):
    # camera at stamp 2: base turned 90 deg at x=2, camera 0.5 m ahead (now along +y), 1 m up
    T = buf.lookup("map", "camera", 2.0)
    np.testing.assert_allclose(T[:3, 3], [12, 0.5, 1], atol=1e-12)
    # and the inverse lookup is the inverse transform
    np.testing.assert_allclose(buf.lookup("camera", "map", 2.0), np.linalg.inv(T), atol=1e-12)
    # a point in the camera frame lands where hand composition says
    p = geometry.transform_points(T, np.array([1.0, 0, 0]))
    np.testing.assert_allclose(p, [12, 1.5, 1], atol=1e-12)


def test_lookup_between_siblings_uses_the_common_ancestor(buf):
    buf.set_transform("base_link", "lidar", 0.0, [0, 0, 2], [0, 0, 0, 1], static=True)
    T = buf.lookup("camera", "lidar", 1.5)
    np.testing.assert_allclose(T[:3, 3], [-0.5, 0, 1], atol=1e-12)


def test_exact_stamps_and_identity(buf):
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 2.0)[:3, 3], [2, 0, 0])
    np.testing.assert_array_equal(buf.lookup("camera", "camera", 123.0), np.eye(4))


def test_never_extrapolates(buf):
    with pytest.raises(ExtrapolationError, match="future") as info:
        buf.lookup("map", "camera", 2.001)
    assert info.value.future
    with pytest.raises(ExtrapolationError, match="past") as info:
        buf.lookup("map", "camera", 0.5)
    assert not info.value.future


def test_unconnected_and_unknown_frames(buf):
    with pytest.raises(ConnectivityError, match="no TF path"):
        buf.lookup("map", "other", 1.0)
    with pytest.raises(ConnectivityError):
        buf.lookup("map", "nowhere", 1.0)


def test_history_is_trimmed_to_the_cache_window():
    b = TfBuffer(cache_time_s=2.0)
    for t in range(10):
        b.set_transform("map", "cam", float(t), [t, 0, 0], [0, 0, 0, 1])
    np.testing.assert_allclose(b.lookup("map", "cam", 8.5)[0, 3], 8.5)
    with pytest.raises(ExtrapolationError):
        b.lookup("map", "cam", 6.5)  # older than 9 - 2
    b.set_transform("map", "cam", 1.0, [0, 0, 0], [0, 0, 0, 1])  # far too old: ignored
    with pytest.raises(ExtrapolationError):
        b.lookup("map", "cam", 1.0)


def test_out_of_order_inserts_are_sorted():
    b = TfBuffer()
    for t in (3.0, 1.0, 2.0):
        b.set_transform("map", "cam", t, [t, 0, 0], [0, 0, 0, 1])
    np.testing.assert_allclose(b.lookup("map", "cam", 1.5)[0, 3], 1.5)
    np.testing.assert_allclose(b.lookup("map", "cam", 2.5)[0, 3], 2.5)


def test_clear_keeps_statics_unless_asked(buf):
    buf.clear()
    np.testing.assert_allclose(buf.lookup("map", "odom", 99.0)[0, 3], 10)
    with pytest.raises(ConnectivityError):
        buf.lookup("map", "camera", 1.5)
    buf.clear(static_too=True)
    assert buf.frames() == set()


@pytest.mark.parametrize("t, q, error", [
    ([np.nan, 0, 0], [0, 0, 0, 1], "NaN"),
    ([0, 0, 0], [0, 0, np.inf, 1], "NaN"),
    ([0, 0, 0], [0, 0, 0, 2], "norm"),
    ([0, 0, 0], [0, 0, 0, 0], "norm"),
])
def test_bad_transforms_are_refused(buf, t, q, error):
    with pytest.raises(ValueError, match=error):
        buf.set_transform("map", "x", 1.0, t, q)
    assert "x" not in buf.frames()


def test_non_rotation_matrix_is_refused():
    m = np.eye(4)
    m[0, 0] = 2.0
    with pytest.raises(ValueError, match="rigid"):
        TfBuffer().set_transform_matrix("map", "cam", 0.0, m)


def test_loop_in_the_tree_is_refused():
    b = TfBuffer()
    b.set_transform("a", "b", 0.0, [0, 0, 0], [0, 0, 0, 1], static=True)
    b.set_transform("b", "c", 0.0, [1, 0, 0], [0, 0, 0, 1], static=True)
    with pytest.raises(ValueError, match="loop"):
        b.set_transform("c", "a", 0.0, [0, 0, 0], [0, 0, 0, 1], static=True)
    np.testing.assert_allclose(b.lookup("a", "c", 0.0)[:3, 3], [1, 0, 0])  # the tree is intact
    with pytest.raises(ConnectivityError):
        b.lookup("a", "z", 0.0)


def test_slerp_takes_the_short_arc():
    q0, q1 = yaw_quat(170), -yaw_quat(-170)  # 20 degrees apart across +-180, q1 in the other hemisphere
    mid = slerp(q0, q1, 0.5)
    R = geometry.matrix_from_quat(mid)
    assert abs(abs(np.degrees(np.arctan2(R[1, 0], R[0, 0]))) - 180) < 1e-9
