"""PLY files and the bird's-eye picture."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gs_reasoner_ros import geometry as g
from gs_reasoner_ros.visualization import birds_eye_image, birds_eye_png, read_ply, write_ply


def test_ply_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (500, 3), dtype=np.uint8)
    path = write_ply(tmp_path / "cloud.ply", pts, cols)
    back_p, back_c = read_ply(path)
    np.testing.assert_array_equal(back_p, pts)
    np.testing.assert_array_equal(back_c, cols)
    raw = path.read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    assert b"format binary_little_endian 1.0" in header and b"element vertex 500" in header
    assert len(body) == 500 * 15  # 3 floats + 3 bytes per vertex, packed
    first = np.frombuffer(body[:15], dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    np.testing.assert_array_equal(first["xyz"][0], pts[0])
    np.testing.assert_array_equal(first["rgb"][0], cols[0])


def test_read_ply_written_by_others(tmp_path):
    ascii_ply = tmp_path / "a.ply"
    ascii_ply.write_text("ply\nformat ascii 1.0\ncomment hand-made\nelement vertex 2\nproperty double x\n"
                         "property double y\nproperty double z\nproperty float nx\nproperty uchar red\n"
                         "property uchar green\nproperty uchar blue\nelement face 1\n"
                         "property list uchar int vertex_indices\nend_header\n"
                         "1 2 3 0 10 20 30\n-1 0.5 0 1 255 0 7\n3 0 1 1\n")
    pts, cols = read_ply(ascii_ply)
    np.testing.assert_allclose(pts, [[1, 2, 3], [-1, 0.5, 0]])
    np.testing.assert_array_equal(cols, [[10, 20, 30], [255, 0, 7]])
    big = tmp_path / "b.ply"
    body = np.array([(1.5, -2.0, 0.25)], dtype=">f4").tobytes()
    big.write_bytes(b"ply\nformat binary_big_endian 1.0\nelement vertex 1\nproperty float x\n"
                    b"property float y\nproperty float z\nend_header\n" + body)
    pts, cols = read_ply(big)
    np.testing.assert_array_equal(pts, [[1.5, -2.0, 0.25]])
    assert cols is None


def test_ply_errors(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"PNG....")
    with pytest.raises(ValueError, match="not a PLY"):
        read_ply(bad)
    short = tmp_path / "short.ply"
    short.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\n"
                      b"property float y\nproperty float z\nend_header\n" + b"\0" * 12)
    with pytest.raises(ValueError, match="shorter"):
        read_ply(short)
    with pytest.raises(ValueError, match="uint8"):
        write_ply(tmp_path / "x.ply", np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(N,3\)"):
        write_ply(tmp_path / "x.ply", np.zeros((2, 2)))


def test_birds_eye_shows_the_top_surface_and_box_outline(tmp_path):
    res = 0.02
    pts = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0],  # same pixel: the higher one (green) wins
                    [1.0, 1.0, 0.0], [1.0, 1.0, 2.5],  # 2.5 m is above the default cut (floor + 2 m)
                    [2.0, 0.0, 0.5]])
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [10, 10, 10]], np.uint8)
    box = ("table", np.array([1.0, 0.5, 0.4]), np.array([0, 0, 0, 1.0]), np.array([1.0, 0.6, 0.8]))
    path = birds_eye_png(tmp_path / "top.png", pts, cols, [box], resolution=res)
    img = np.asarray(Image.open(path).convert("RGB"))
    margin = 0.3
    x0, y1 = -margin, 1.0 + margin  # the image spans x from -0.3 and y down from 1.3

    def pixel(x, y, image=img):  # the point's pixel (rounding may move it by one: look around)
        r, c = int((y1 - y) / res), int((x - x0) / res)
        patch = image[r - 1:r + 2, c - 1:c + 2].reshape(-1, 3)
        painted = patch[(patch != 255).any(axis=1)]
        assert len(painted) == 1, patch
        return painted[0]

    assert img.shape[:2] == (int(np.ceil(1.6 / res)) + 1, int(np.ceil(2.6 / res)) + 1)
    np.testing.assert_array_equal(pixel(0.0, 0.0), [0, 255, 0])
    np.testing.assert_array_equal(pixel(1.0, 1.0), [0, 0, 255])
    np.testing.assert_array_equal(pixel(2.0, 0.0), [10, 10, 10])
    # the footprint spans x 0.5..1.5, y 0.2..0.8: its left edge (column 40) is drawn in the first
    # palette colour, its inside stays empty floor
    row = round((y1 - 0.5) / res)
    edge = img[row, 39:42]
    assert any((c == [230, 25, 75]).all() for c in edge)
    np.testing.assert_array_equal(img[row, round((1.0 - x0) / res)], [255, 255, 255])
    everything = np.asarray(birds_eye_image(pts, cols, resolution=res, z_max=np.inf))
    np.testing.assert_array_equal(pixel(1.0, 1.0, everything), [255, 255, 0])


def test_birds_eye_rotated_box_and_empty_cloud():
    q = g.quat_from_matrix(g.rotation_z(np.deg2rad(45))[:3, :3])
    img = birds_eye_image(np.zeros((0, 3)), None, [("tv", np.zeros(3), q, np.array([1.0, 1.0, 1.0]))], 0.05)
    arr = np.asarray(img)
    # a diamond: its corners lie on the axes at 0.707 m, so the image spans 2 * (0.707 + 0.3) m
    assert abs(arr.shape[0] - (2 * (np.sqrt(0.5) + 0.3) / 0.05 + 1)) <= 1
    centre = arr[arr.shape[0] // 2, arr.shape[1] // 2]
    np.testing.assert_array_equal(centre, [255, 255, 255])
    assert (arr != 255).any()  # the outline
    assert birds_eye_image(np.zeros((0, 3))).size[0] > 0
    with pytest.raises(ValueError, match="resolution"):
        birds_eye_image(np.zeros((1, 3)), resolution=0.0)


def test_birds_eye_min_size_repeats_pixels_and_scales_the_boxes():
    rng = np.random.default_rng(4)
    pts = np.column_stack([rng.uniform(0, 3, 400), rng.uniform(0, 2, 400), rng.uniform(0, 1, 400)])
    cols = rng.integers(0, 256, (400, 3), dtype=np.uint8)
    base = np.asarray(birds_eye_image(pts, cols, resolution=0.02))
    big = np.asarray(birds_eye_image(pts, cols, resolution=0.02, min_size=1000))
    zoom = -(-1000 // max(base.shape[:2]))
    assert zoom > 1 and big.shape[:2] == (base.shape[0] * zoom, base.shape[1] * zoom) and max(big.shape) >= 1000
    np.testing.assert_array_equal(big[::zoom, ::zoom], base)  # the same picture, each pixel repeated
    box = ("sofa", np.array([1.5, 1.0, 0.4]), np.array([0, 0, 0, 1.0]), np.array([1.0, 0.6, 0.8]))
    small = birds_eye_image(np.zeros((0, 3)), None, [box], resolution=0.02)
    outline = np.asarray(birds_eye_image(np.zeros((0, 3)), None, [box], resolution=0.02, min_size=1000))
    zoom = outline.shape[1] // small.size[0]
    assert zoom > 1 and outline.shape[:2] == (small.size[1] * zoom, small.size[0] * zoom)
    drawn = np.argwhere((outline != 255).any(axis=2))
    # the footprint is 1.0 x 0.6 m: 50 x 30 pixels at 0.02 m per pixel, times the zoom
    rows, columns = np.ptp(drawn[:, 0]) + 1, np.ptp(drawn[:, 1]) + 1
    assert abs(columns - 50 * zoom) <= 2 * zoom and rows >= 28 * zoom  # (+ the label above)
    assert birds_eye_image(pts, cols, resolution=0.02, min_size=10).size == birds_eye_image(pts, cols).size
