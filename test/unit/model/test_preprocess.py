"""Frame preprocessing: crop geometry, unprojection, RGB normalisation (gs_reasoner_model.md §2.1, §2.2)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from gs_reasoner_ros.model.preprocess import (crop_box, normalize_rgb, preprocess_frames, resized_size,
                                              world_coordinate_map)
from gs_reasoner_ros.scene import Scene, load_3dmatch

K = np.array([[500.0, 0.0, 319.5], [0.0, 510.0, 241.0], [0.0, 0.0, 1.0]])


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    cz, sz, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    return np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])


def _pose(yaw, pitch, t) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = _rotation(yaw, pitch), t
    return pose


def test_resize_and_crop_geometry_480x640():
    assert resized_size(480, 640) == (384, 512)
    assert crop_box(384, 512) == (0, 64)  # columns 64..447 are kept
    assert resized_size(640, 480) == (512, 384) and crop_box(512, 384) == (64, 0)


def test_point_map_is_nearest_resized_then_centre_cropped():
    # Identity pose and a constant depth: x of the world point names the source column.
    depth = np.full((1, 480, 640), 2.0, np.float32)
    rgb = np.zeros((1, 480, 640, 3), np.uint8)
    scene = Scene(rgb, depth, K, np.eye(4)[None])
    _, coords = preprocess_frames(scene, [0])
    assert coords.shape == (1, 384, 384, 3)
    for row, col in [(0, 0), (0, 383), (200, 100), (383, 191)]:
        src_col = int((col + 64) * 1.25)  # nearest: source index floor(dst * 640/512)
        src_row = int(row * 1.25)
        np.testing.assert_allclose(coords[0, row, col, 0], (src_col - 319.5) * 2.0 / 500.0, rtol=1e-6)
        np.testing.assert_allclose(coords[0, row, col, 1], (src_row - 241.0) * 2.0 / 510.0, rtol=1e-6)


def test_unprojection_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 4.0, (48, 64)).astype(np.float32)
    depth[3, 7] = 0.0  # no measurement: the authors unproject it to the camera centre
    depth[9, 2] = np.nan
    pose = _pose(0.7, -0.3, [1.0, -2.0, 0.5])
    align = _pose(np.pi / 2, 0.0, [0.2, 0.0, -1.0])
    points = world_coordinate_map(depth, K, align @ pose)
    assert points.shape == (48, 64, 3) and points.dtype == np.float32
    for v, u in [(0, 0), (47, 63), (20, 31), (3, 7), (9, 2)]:
        z = 0.0 if np.isnan(depth[v, u]) else float(depth[v, u])
        camera = np.array([(u - 319.5) * z / 500.0, (v - 241.0) * z / 510.0, z, 1.0])
        expected = (align @ pose @ camera)[:3]
        np.testing.assert_allclose(points[v, u], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(points[3, 7], (align @ pose)[:3, 3], atol=1e-6)


def test_rgb_normalisation_values():
    pixels = np.array([[[0, 128, 255]]], np.uint8)
    np.testing.assert_allclose(normalize_rgb(pixels)[:, 0, 0], [-1.0, 128 / 255 * 2 - 1, 1.0], atol=1e-7)


def test_frames_match_pillow_default_resize_of_a_larger_colour_image():
    # Colour at twice the depth resolution: it is resized straight to the depth-derived 384x512.
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (1, 960, 1280, 3), dtype=np.uint8)
    scene = Scene(rgb, np.ones((1, 480, 640), np.float32), K, np.eye(4)[None])
    pixels, coords = preprocess_frames(scene, [0])
    reference = np.asarray(Image.fromarray(rgb[0]).resize((512, 384)))[:, 64:448]  # Pillow's default filter
    assert pixels.shape == (1, 3, 384, 384) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[0], (reference.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-6)


def test_real_frames(rgbd_3dmatch):
    scene = load_3dmatch(rgbd_3dmatch)
    pixels, coords = preprocess_frames(scene, [0, len(scene) - 1])
    assert pixels.shape == (2, 3, 384, 384) and coords.shape == (2, 384, 384, 3)
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0
    # Valid depth pixels are in front of the camera: distance to its centre is the depth scale.
    centre = scene.poses[0][:3, 3]
    distance = np.linalg.norm(coords[0] - centre, axis=-1)
    assert np.median(distance) > 0.3 and distance.max() < 20


@pytest.mark.parametrize("indices, message", [([], "empty"), ([5], "out of range"), ([-3], "out of range")])
def test_bad_frame_indices(indices, message):
    scene = Scene(np.zeros((2, 48, 64, 3), np.uint8), np.ones((2, 48, 64), np.float32), K, np.stack([np.eye(4)] * 2))
    with pytest.raises(ValueError, match=message):
        preprocess_frames(scene, indices)


def test_not_a_scene():
    with pytest.raises(ValueError, match="Scene"):
        preprocess_frames({"rgb": None}, [0])


def _posed_scene(n=4, h=60, w=80, seed=0) -> Scene:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 4.0, (n, h, w)).astype(np.float32)
    depth[:, 5, 5] = 0.0
    depth[:, 7, 9] = np.nan
    poses = np.stack([_pose(0.3 * i, -0.2, [0.5 * i, 1.0, 1.4]) for i in range(n)])
    return Scene(rgb, depth, K * [[w / 640], [h / 480], [1]], poses, _pose(0.4, 0.1, [0.3, -0.2, 0.1]))


def test_frame_cache_equals_the_reference_exactly():
    from gs_reasoner_ros.model.preprocess import FrameCache

    scene = _posed_scene()
    frames = [0, 2, 3, 2]
    pixels, coords = preprocess_frames(scene, frames)
    cache = FrameCache(capacity=3)
    got_pixels, got_coords = cache.inputs(scene, frames)
    assert got_pixels.dtype == got_coords.dtype == torch.float32
    np.testing.assert_array_equal(got_pixels.numpy(), pixels)
    np.testing.assert_array_equal(got_coords.numpy(), coords)
    assert (cache.misses, cache.hits, len(cache)) == (3, 1, 3)
    # Same frames, new poses and alignment: nothing is prepared again, the result is still exact.
    scene.poses[:, :3, 3] += 0.75
    scene.axis_align = _pose(-1.0, 0.0, [0.0, 0.0, 0.5])
    got_pixels, got_coords = cache.inputs(scene, frames)
    np.testing.assert_array_equal(got_coords.numpy(), preprocess_frames(scene, frames)[1])
    assert cache.misses == 3
    # Least recently used frames leave first; changed pixels make a new entry.
    cache.inputs(scene, [1])
    assert len(cache) == 3 and cache.misses == 4
    scene.depth[1, 10, 10] += 1.0
    cache.inputs(scene, [1])
    assert cache.misses == 5
    with pytest.raises(ValueError, match="out of range"):
        cache.inputs(scene, [9])
    with pytest.raises(ValueError, match="capacity"):
        FrameCache(capacity=0)


def test_frame_cache_on_3dmatch_equals_the_reference(rgbd_3dmatch):
    from gs_reasoner_ros.model.preprocess import FrameCache

    scene = load_3dmatch(rgbd_3dmatch)
    frames = list(range(len(scene)))[:2]
    pixels, coords = preprocess_frames(scene, frames)
    got_pixels, got_coords = FrameCache().inputs(scene, frames)
    np.testing.assert_array_equal(got_pixels.numpy(), pixels)
    np.testing.assert_array_equal(got_coords.numpy(), coords)


# ---- frame ids: caches key on a promised-stable id instead of hashing pixels -----------------

def _with_ids(scene: Scene, ids) -> Scene:
    return Scene(scene.rgb, scene.depth, scene.intrinsics, scene.poses, scene.axis_align, frame_ids=ids)


def test_frame_key_uses_the_id_whatever_the_pixels():
    from gs_reasoner_ros.model.preprocess import frame_key

    a, b = _posed_scene(2, seed=1), _posed_scene(2, seed=2)  # different pixels
    # The contract: an id promises the content, so the same id is the same key even if pixels differ.
    assert frame_key(_with_ids(a, ["x", "y"]), 0) == frame_key(_with_ids(b, ["x", "z"]), 0) == ("id", "x")
    assert frame_key(_with_ids(a, [7, 8]), 0) != frame_key(_with_ids(a, [9, 8]), 0)
    assert frame_key(_with_ids(a, np.array([7, 8])), 1) == frame_key(_with_ids(b, [7, 8]), 1)
    # Without ids the key follows the pixels: equal pixels (another object) match, a changed pixel does not.
    copy = Scene(a.rgb.copy(), a.depth.copy(), a.intrinsics, a.poses)
    assert frame_key(a, 1) == frame_key(copy, 1) != frame_key(a, 0)
    copy.rgb[1, 0, 0, 0] ^= 1
    assert frame_key(a, 1) != frame_key(copy, 1)
    assert frame_key(a, 1) != frame_key(_with_ids(a, [0, 1]), 1)  # an id key never equals a pixel key


def test_frame_cache_with_ids_equals_the_reference_without_hashing(monkeypatch):
    from gs_reasoner_ros.model import preprocess
    from gs_reasoner_ros.model.preprocess import FrameCache

    def no_crc(*args):
        raise AssertionError("frame ids were given: the pixels must not be hashed")

    plain = _posed_scene()
    frames = [3, 0, 2, 0]
    pixels, coords = preprocess_frames(plain, frames)
    monkeypatch.setattr(preprocess, "zlib", SimpleNamespace(crc32=no_crc))
    scene = _with_ids(plain, [10, 11, 12, 13])
    cache = FrameCache()
    keys = cache.add(scene, frames)
    assert keys == [("id", 13), ("id", 10), ("id", 12), ("id", 10)] and (cache.misses, cache.hits) == (3, 1)
    got_pixels, got_coords = cache.inputs(scene, frames, keys)
    np.testing.assert_array_equal(got_pixels.numpy(), pixels)
    np.testing.assert_array_equal(got_coords.numpy(), coords)
    # New poses under the same ids: nothing prepared again, coordinates follow the poses exactly.
    moved = Scene(scene.rgb, scene.depth, scene.intrinsics, scene.poses @ _pose(0.2, 0.0, [0.1, 0.0, 0.0]),
                  scene.axis_align, frame_ids=scene.frame_ids)
    _, got = cache.inputs(moved, frames)
    monkeypatch.undo()
    np.testing.assert_array_equal(got.numpy(), preprocess_frames(moved, frames)[1])
    assert cache.misses == 3


def test_scene_frame_ids_are_checked_and_kept_by_select():
    scene = _posed_scene(3)
    assert scene.frame_ids is None and scene.select([2, 0]).frame_ids is None
    ided = _with_ids(scene, np.array([5, 6, 7]))
    assert ided.frame_ids == (5, 6, 7) and type(ided.frame_ids[0]) is int
    assert ided.select([2, 0, 2]).frame_ids == (7, 5, 7)
    with pytest.raises(ValueError, match="2 ids for 3 frames"):
        _with_ids(scene, [1, 2])
    with pytest.raises(ValueError, match="not hashable"):
        _with_ids(scene, [1, [2], 3])
    with pytest.raises(ValueError, match="sequence of 3 ids"):
        _with_ids(scene, "abc")
    with pytest.raises(ValueError, match="sequence of 3 ids"):
        _with_ids(scene, 3)
