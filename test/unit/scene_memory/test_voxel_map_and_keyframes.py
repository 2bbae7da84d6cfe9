"""Voxel map and keyframe store, against brute-force numpy references and the real frames."""
from __future__ import annotations

import importlib.util
import threading
import time

import numpy as np
import pytest

from gs_reasoner_ros import geometry as g
from gs_reasoner_ros.scene import load_3dmatch
from gs_reasoner_ros.scene_memory import Frame, KeyframeStore, TorchVoxelMap, VoxelMap, make_voxel_map
from gs_reasoner_ros.synthetic import synthetic_scene


def brute_force_voxels(points, colors, voxel):
    """{voxel index tuple: (mean point, mean colour)} by np.unique (the reference)."""
    ijk = np.floor(points / voxel).astype(np.int64)
    keys, inverse, counts = np.unique(ijk, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    mean_p = np.stack([np.bincount(inverse, points[:, i]) for i in range(3)], 1) / counts[:, None]
    mean_c = np.stack([np.bincount(inverse, colors[:, i].astype(float)) for i in range(3)], 1) / counts[:, None]
    return keys, mean_p, mean_c


def sorted_by_voxel(points, voxel, *others):
    order = np.lexsort(np.floor(points / voxel).astype(np.int64).T[::-1])
    return [points[order]] + [o[order] for o in others]


def frame_of(scene, i, stamp=None):
    return Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i],
                 float(i if stamp is None else stamp))


@pytest.fixture(scope="module")
def small_scene():
    scene, _ = synthetic_scene(seed=2, n_frames=4, width=96, height=72)
    return scene


# ---- voxel map ----------------------------------------------------------------------------

def test_voxel_map_matches_brute_force_unique():
    rng = np.random.default_rng(0)
    vm = VoxelMap(voxel_size=0.05)
    batches = [(rng.normal(scale=0.6, size=(4000, 3)) + [0, 0, 1], rng.integers(0, 256, (4000, 3), dtype=np.uint8))
               for _ in range(3)]
    for pts, cols in batches:
        assert vm.integrate(pts, cols) == len(pts)
    all_p = np.concatenate([b[0] for b in batches])
    all_c = np.concatenate([b[1] for b in batches])
    keys, mean_p, mean_c = brute_force_voxels(all_p, all_c, 0.05)
    assert len(vm) == len(keys)
    got_p, got_c = vm.snapshot()
    assert got_p.dtype == np.float32 and got_c.dtype == np.uint8
    got_p, got_c = sorted_by_voxel(got_p.astype(np.float64), 0.05, got_c)
    ref_p, ref_c = sorted_by_voxel(mean_p, 0.05, mean_c)
    np.testing.assert_allclose(got_p, ref_p, atol=1e-4)  # centroids kept to 1/2048 voxel
    assert np.abs(got_c.astype(int) - np.rint(ref_c)).max() <= 1


def test_running_average_colour_and_position():
    vm = VoxelMap(voxel_size=0.1)
    for value, x in [(0, 0.01), (100, 0.02), (200, 0.06)]:
        vm.integrate(np.array([[x, 0.05, 0.05]]), np.full((1, 3), value, np.uint8))
    assert len(vm) == 1
    np.testing.assert_array_equal(vm.colors(), [[100, 100, 100]])
    np.testing.assert_allclose(vm.points(), [[0.03, 0.05, 0.05]], atol=1e-4)
    vm.integrate(np.array([[0.15, 0.05, 0.05]]), np.zeros((1, 3), np.uint8))  # the next voxel
    assert len(vm) == 2


def test_integrate_frame_equals_unprojected_points(small_scene):
    """The fast frame path agrees with unproject_depth + transform_points + integrate."""
    frame = frame_of(small_scene, 1)
    frame.depth = frame.depth.copy()  # a view of the module's shared scene otherwise
    frame.depth[::7, ::5] = 0.0  # holes, NaN and negative depth are skipped
    frame.depth[3, ::3] = np.nan
    frame.depth[5, :] = -1.0
    fast, slow = VoxelMap(0.02), VoxelMap(0.02)
    n = fast.integrate_frame(frame, stride=2)
    cam = g.unproject_depth(frame.depth, frame.K, stride=2)
    ok = np.isfinite(cam[..., 0])
    assert n == ok.sum()
    slow.integrate(g.transform_points(frame.pose, cam[ok]), frame.rgb[::2, ::2][ok])
    assert len(fast) == len(slow)
    p1, c1 = fast.snapshot()
    p2, c2 = slow.snapshot()
    p1, c1 = sorted_by_voxel(p1.astype(np.float64), 0.02, c1)
    p2, c2 = sorted_by_voxel(p2.astype(np.float64), 0.02, c2)
    np.testing.assert_allclose(p1, p2, atol=1e-4)
    np.testing.assert_array_equal(c1, c2)


def test_colour_image_at_another_resolution(small_scene):
    frame = frame_of(small_scene, 0)
    big = np.repeat(np.repeat(frame.rgb, 2, axis=0), 2, axis=1)  # same picture at twice the size
    a, b = VoxelMap(0.02), VoxelMap(0.02)
    a.integrate_frame(frame)
    b.integrate_frame(Frame(big, frame.depth, frame.K, frame.pose, 0.0))
    np.testing.assert_array_equal(a.colors(), b.colors())


def test_real_frames_seen_twice_coincide(rgbd_3dmatch):
    """Frames 0 and 1 of the 3DMatch sequence: the surface they both see lands in the same place."""
    scene = load_3dmatch(rgbd_3dmatch, names=["frame-000000", "frame-000001"])
    maps = [VoxelMap(0.02), VoxelMap(0.02)]
    for i, vm in enumerate(maps):
        vm.integrate_frame(frame_of(scene, i), stride=2)
    p0, p1 = maps[0].points(), maps[1].points()
    # overlap: frame-1 voxels that frame 0's camera sees unoccluded (depth agrees within 5 cm)
    cam0 = g.transform_points(g.invert_transform(scene.poses[0]), p1.astype(np.float64))
    K = scene.intrinsics[0]
    u = np.round(cam0[:, 0] / cam0[:, 2] * K[0, 0] + K[0, 2]).astype(int)
    v = np.round(cam0[:, 1] / cam0[:, 2] * K[1, 1] + K[1, 2]).astype(int)
    h, w = scene.depth.shape[1:]
    inside = (cam0[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    d0 = np.zeros(len(p1))
    d0[inside] = scene.depth[0][v[inside], u[inside]]
    overlap = inside & (d0 > 0) & (np.abs(d0 - cam0[:, 2]) < 0.05)
    assert overlap.sum() > 0.5 * len(p1)  # consecutive frames: most of the view is shared
    sample = p1[overlap][np.random.default_rng(0).choice(overlap.sum(), 1000, replace=False)]
    nearest = np.concatenate([nearest_distance(chunk, p0) for chunk in np.split(sample, 10)])
    assert np.percentile(nearest, 95) < 0.03
    # fusing both frames gives exactly the union of their voxels (each centroid lies in its voxel)
    fused = VoxelMap(0.02)
    for i in range(2):
        fused.integrate_frame(frame_of(scene, i), stride=2)
    cells = [{tuple(c) for c in np.floor(p.astype(np.float64) / 0.02).astype(int)} for p in (p0, p1)]
    fused_cells = {tuple(c) for c in np.floor(fused.points().astype(np.float64) / 0.02).astype(int)}
    assert fused_cells == cells[0] | cells[1] and len(fused_cells) == len(fused)


def nearest_distance(queries, points):
    """Brute-force distance from each query to its nearest point (float64 |a|^2 + |b|^2 - 2ab)."""
    q, p = queries.astype(np.float64), points.astype(np.float64)
    sq = (q ** 2).sum(1)[:, None] + (p ** 2).sum(1)[None, :] - 2 * q @ p.T
    return np.sqrt(np.maximum(sq.min(axis=1), 0.0))


def cluster(center, n_side=8, voxel=0.1):
    """n_side**3 points, one per voxel, in a cube of voxels at `center`."""
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return (grid + 0.5) * voxel + np.asarray(center, float), np.full((len(grid), 3), 50, np.uint8)


def point_set(points):
    return {tuple(np.round(p, 3)) for p in np.asarray(points, np.float64)}


def test_cap_oldest_evicts_least_recently_seen():
    vm = VoxelMap(voxel_size=0.1, max_voxels=1000, eviction="oldest")
    a, b, c = cluster([0, 0, 0]), cluster([5, 0, 0]), cluster([10, 0, 0])  # 512 voxels each
    vm.integrate(*a)
    vm.integrate(*b)  # 1024 > 1000: down to 900, all of B kept, 388 of A
    assert len(vm) == 900 and vm.evicted == 124
    assert point_set(b[0]) <= point_set(vm.points())
    survivors_a = point_set(vm.points()) & point_set(a[0])
    assert len(survivors_a) == 388
    # see A's survivors again: now B is the least recently seen
    seen_again = np.array(sorted(survivors_a))
    vm.integrate(seen_again, np.full(seen_again.shape, 50, np.uint8))
    vm.integrate(*c)  # 1412 > 1000: keep C (512) and the re-seen A (388); B goes
    kept = point_set(vm.points())
    assert len(vm) == 900 and len(vm) <= vm.max_voxels
    assert point_set(c[0]) <= kept and survivors_a <= kept and not (kept & point_set(b[0]))


def test_cap_farthest_evicts_far_from_the_last_camera():
    vm = VoxelMap(voxel_size=0.1, max_voxels=1000, eviction="farthest")
    a, b = cluster([0, 0, 0]), cluster([5, 0, 0])
    vm.integrate(*a, origin=[0, 0, 0])
    vm.integrate(*b, origin=[5.4, 0.4, 0.4])
    assert len(vm) == 900
    candidates = np.concatenate([a[0], b[0]])
    nearest = candidates[np.argsort(np.linalg.norm(candidates - [5.4, 0.4, 0.4], axis=1))[:900]]
    assert point_set(vm.points()) == point_set(nearest)
    for i in range(5):  # stays bounded however much arrives
        vm.integrate(*cluster([0, 2 * i, 3]), origin=[0, 2 * i, 3])
        assert len(vm) <= 1000


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_voxels_made_after_an_eviction_start_from_zero(backend):
    """Freed rows are reused by new voxels, which add into them: a grey cluster evicted by a
    white one, then a black point in a new voxel must read back black at its own position."""
    vm = VoxelMap(voxel_size=0.1, max_voxels=1000) if backend == "numpy" else TorchVoxelMap(0.1, 1000, device="cpu")
    grey, white = cluster([0, 0, 0]), cluster([5, 0, 0])
    vm.integrate(grey[0], np.full(grey[1].shape, 128, np.uint8))
    vm.integrate(white[0], np.full(white[1].shape, 255, np.uint8))
    assert vm.evicted == 124
    point = np.array([[20.03, 0.04, 0.05]])
    vm.integrate(point, np.zeros((1, 3), np.uint8))
    points, colours = vm.snapshot()
    new = np.flatnonzero(np.all(np.abs(points - point) < 1e-3, axis=1))
    assert len(new) == 1 and colours[new[0]].tolist() == [0, 0, 0]
    assert len(vm) == 901


@pytest.mark.parametrize("eviction", ["oldest", "farthest"])
def test_many_evictions_keep_the_hash_consistent(eviction):
    """Churn through many evictions (tombstones, moved slots, table rebuilds): voxels stay unique,
    and seeing the kept voxels again finds them instead of adding duplicates."""
    rng = np.random.default_rng(3)
    vm = VoxelMap(voxel_size=0.1, max_voxels=500, eviction=eviction)
    for step in range(40):
        centre = rng.uniform(-3, 3, 3)
        pts = centre + rng.normal(scale=0.3, size=(300, 3))
        vm.integrate(pts, rng.integers(0, 256, (300, 3), dtype=np.uint8), origin=centre)
        assert len(vm) <= 500
        cells = np.floor(vm.points().astype(np.float64) / 0.1).astype(np.int64)
        assert len(np.unique(cells, axis=0)) == len(vm)
    assert vm.evicted > 5 * 500
    before_p, before_c = vm.snapshot()
    n = len(vm)
    vm.integrate(before_p, before_c, origin=before_p.mean(axis=0))
    assert len(vm) == n  # all found: no duplicates behind tombstones
    after_p, after_c = vm.snapshot()
    np.testing.assert_allclose(after_p, before_p, atol=1e-4)  # adding each centroid again keeps it
    assert np.abs(after_c.astype(int) - before_c.astype(int)).max() <= 1


def test_cap_with_real_sized_frames_stays_bounded(small_scene):
    vm = VoxelMap(voxel_size=0.02, max_voxels=3000, eviction="oldest")
    for i in range(len(small_scene)):
        vm.integrate_frame(frame_of(small_scene, i))
        assert len(vm) <= 3000
        assert len(vm.points()) == len(vm.colors()) == len(vm)
    assert vm.evicted > 0


def test_clear_and_thread_safe_reads(small_scene):
    vm = VoxelMap(0.02)
    frames = [frame_of(small_scene, i) for i in range(len(small_scene))]
    errors, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            p, c = vm.snapshot()
            if len(p) != len(c):
                errors.append((len(p), len(c)))
            time.sleep(0.001)  # like a throttled publisher; a busy loop would just fight for the GIL

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            for f in frames:
                vm.integrate_frame(f)
    finally:
        stop.set()
        reader.join()
    assert not errors
    assert len(vm) > 0
    vm.clear()
    assert len(vm) == 0 and vm.points().shape == (0, 3) and vm.colors().shape == (0, 3)
    vm.integrate_frame(frames[0])  # usable after clear
    assert len(vm) > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(voxel_size=0.0), "voxel_size"), (dict(voxel_size=float("nan")), "voxel_size"),
    (dict(max_voxels=0), "max_voxels"), (dict(eviction="random"), "eviction"),
    (dict(max_depth=-1.0), "max_depth"), (dict(device="tpu"), "device"),
])
def test_voxel_map_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VoxelMap(**kwargs)


def test_voxel_map_rejects_bad_input_and_skips_non_finite_points():
    vm = VoxelMap(0.1)
    with pytest.raises(ValueError, match="points must be"):
        vm.integrate(np.zeros((3, 2)), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        vm.integrate(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="like points"):
        vm.integrate(np.zeros((3, 3)), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="Frame"):
        vm.integrate_frame("not a frame")
    pts = np.array([[0.0, 0, 0], [np.nan, 0, 0], [np.inf, 1, 1], [1e9, 0, 0], [0.5, 0.5, 0.5]])
    # NaN/inf are skipped; 1e9 m is outside the key range (+-2**20 voxels) and dropped
    vm.integrate(pts, np.zeros((5, 3), np.uint8))
    assert len(vm) == 2


@pytest.mark.parametrize("change, match", [
    (dict(depth=np.zeros((4, 4), np.uint16)), "float metres"),
    (dict(rgb=np.zeros((4, 4, 3), np.float32)), "uint8"),
    (dict(rgb=np.zeros((4, 8, 3), np.uint8)), "aspect ratio"),
    (dict(K=np.zeros((3, 3))), "focal"),
    (dict(pose=np.full((4, 4), np.nan)), "NaN"),
    (dict(pose=np.diag([1.0, 1.0, -1.0, 1.0])), "rigid"),
    (dict(stamp=float("inf")), "stamp"),
])
def test_frame_validation(change, match):
    args = dict(rgb=np.zeros((4, 4, 3), np.uint8), depth=np.ones((4, 4), np.float32), K=np.eye(3),
                pose=np.eye(4), stamp=0.0) | change
    with pytest.raises(ValueError, match=match):
        Frame(**args)


# ---- keyframes ----------------------------------------------------------------------------

def posed(stamp, x=0.0, yaw_deg=0.0, size=(4, 4)):
    T = g.rotation_z(np.deg2rad(yaw_deg))
    T[0, 3] = x
    return Frame(np.zeros((*size, 3), np.uint8), np.ones(size, np.float32), np.eye(3), T, stamp)


def test_keyframe_policy():
    store = KeyframeStore(min_translation=0.15, min_rotation_deg=10.0, min_interval_s=0.5, max_interval_s=5.0)
    assert store.newest_stamp is None
    assert store.offer(posed(0.0))  # the first frame always
    assert not store.offer(posed(0.2, x=1.0))  # moved, but too soon
    assert not store.offer(posed(1.0, x=0.1))  # not moved enough
    assert store.offer(posed(1.1, x=0.2))  # moved 0.2 m
    assert not store.offer(posed(2.0, x=0.2, yaw_deg=8.0))  # turned 8 degrees only
    assert store.offer(posed(2.0, x=0.2, yaw_deg=12.0))  # turned 12 degrees
    assert not store.offer(posed(6.9, x=0.2, yaw_deg=12.0))  # still, 4.9 s
    assert store.offer(posed(7.0, x=0.2, yaw_deg=12.0))  # still, but 5 s passed
    assert not store.offer(posed(3.0, x=5.0))  # from the past: refused
    assert [f.stamp for f in store.frames()] == [0.0, 1.1, 2.0, 7.0]
    assert store.newest_stamp == 7.0 and len(store) == 4
    store.clear()
    assert len(store) == 0 and store.newest_stamp is None
    assert store.offer(posed(0.0))  # a fresh timeline after clear


def test_keyframe_cap_oldest_and_farthest():
    oldest = KeyframeStore(max_keyframes=3, min_interval_s=0.0, eviction="oldest")
    for i in range(5):
        oldest.offer(posed(float(i), x=float(i)))
    assert [f.stamp for f in oldest.frames()] == [2.0, 3.0, 4.0]
    farthest = KeyframeStore(max_keyframes=3, min_interval_s=0.0, eviction="farthest")
    for i, x in enumerate([0.0, 3.0, 1.0, 0.5]):  # the newest at 0.5: 3.0 is farthest from it
        farthest.offer(posed(float(i), x=x))
    assert [f.pose[0, 3] for f in farthest.frames()] == [0.0, 1.0, 0.5]
    assert farthest.newest_stamp == 3.0


def test_to_scene_picks_uniformly(small_scene):
    store = KeyframeStore(max_keyframes=64, min_interval_s=0.0, max_interval_s=0.0)  # keep every frame
    for i in range(10):
        store.offer(frame_of(small_scene, i % len(small_scene), stamp=i))
    A = g.rotation_z(0.3)
    scene = store.to_scene(count=4, axis_align=A)
    np.testing.assert_array_equal(scene.stamps, np.linspace(0, 9, 4).astype(int))
    np.testing.assert_array_equal(scene.axis_align, A)
    np.testing.assert_array_equal(scene.depth[1], small_scene.depth[3 % len(small_scene)])
    np.testing.assert_array_equal(scene.poses[2], small_scene.poses[6 % len(small_scene)])
    assert len(store.to_scene(count=32)) == 10
    np.testing.assert_array_equal(store.to_scene().axis_align, np.eye(4))
    store.offer(posed(20.0, size=(8, 8)))  # the camera was reconfigured: only frames like the newest
    assert len(store.to_scene()) == 1
    with pytest.raises(ValueError, match="rigid"):
        store.to_scene(axis_align=np.diag([2.0, 1, 1, 1]))


def test_keyframe_ids_are_unique_across_stores_and_clear(small_scene):
    every = dict(min_interval_s=0.0, max_interval_s=0.0)
    store, other = KeyframeStore(max_keyframes=3, **every), KeyframeStore(**every)
    frames = [frame_of(small_scene, i % len(small_scene), stamp=i) for i in range(5)]
    for f in frames:
        store.offer(f)
        other.offer(f)  # the same Frame object in two stores: still two ids
    ids = store.to_scene().frame_ids
    assert len(ids) == 3 and [store.frame_id(f) for f in frames] == [None, None, *ids]
    assert store.frame_id(posed(0.0)) is None
    store.clear()
    for f in frames[:3]:
        store.offer(f)  # the same frames again after clear(): new ids
    seen = list(ids) + list(store.to_scene().frame_ids) + list(other.to_scene().frame_ids)
    assert len(seen) == len(set(seen)) == 11


def test_to_scene_reuses_its_scene_until_the_store_changes(small_scene):
    store = KeyframeStore(max_keyframes=4, min_interval_s=0.0, max_interval_s=0.0, eviction="oldest")
    for i in range(3):
        store.offer(frame_of(small_scene, i, stamp=i))
    first = store.to_scene(count=8)
    assert store.to_scene(count=8) is first and store.to_scene(count=8, axis_align=np.eye(4)) is first
    with pytest.raises(ValueError, match="read-only"):
        first.poses[0, 0, 3] = 1.0  # shared with later callers: nobody may write into it
    assert not any(a.flags.writeable for a in (first.rgb, first.depth, first.intrinsics, first.axis_align))
    A = g.rotation_z(0.5)
    aligned = store.to_scene(count=8, axis_align=A)
    assert aligned is not first and store.to_scene(count=8, axis_align=A) is aligned
    np.testing.assert_array_equal(aligned.axis_align, A)
    assert aligned.rgb is first.rgb  # a new alignment needs no new copy of the images
    two = store.to_scene(count=2)
    assert len(two) == 2 and two.frame_ids == first.frame_ids[::2] and store.to_scene(count=2) is two
    aligned = store.to_scene(count=8, axis_align=A)  # one Scene is kept: the last asked for
    # A refused frame and new_timeline() change no keyframe; a kept frame, an eviction, a
    # transform and clear() each do.
    assert not store.offer(frame_of(small_scene, 0, stamp=-1.0))
    assert store.to_scene(count=8, axis_align=A) is aligned
    store.new_timeline()
    assert store.to_scene(count=8, axis_align=A) is aligned
    before = store.to_scene(count=8)
    assert store.offer(frame_of(small_scene, 3, stamp=3))
    grown = store.to_scene(count=8)
    assert grown is not before and len(grown) == 4 and grown.frame_ids[:3] == before.frame_ids
    assert store.offer(frame_of(small_scene, 0, stamp=4))  # over the cap: the oldest goes
    evicted = store.to_scene(count=8)
    assert evicted is not grown and evicted.frame_ids == grown.frame_ids[1:] + (evicted.frame_ids[-1],)
    np.testing.assert_array_equal(evicted.stamps, [1, 2, 3, 4])
    T = g.rotation_z(0.2)
    T[:3, 3] = [0.5, -0.25, 0.0]
    store.transform(T)
    moved = store.to_scene(count=8)
    assert moved is not evicted and moved.frame_ids == evicted.frame_ids  # same content, same ids
    np.testing.assert_allclose(moved.poses, T @ evicted.poses)
    np.testing.assert_array_equal(moved.depth, evicted.depth)
    store.clear()
    with pytest.raises(ValueError, match="no keyframes"):
        store.to_scene(count=8)
    store.offer(frame_of(small_scene, 1, stamp=0))
    again = store.to_scene(count=8)
    assert len(again) == 1 and again.frame_ids[0] not in moved.frame_ids
    np.testing.assert_array_equal(again.rgb[0], small_scene.rgb[1])


def test_to_scene_while_keyframes_arrive_matches_ids_to_frames(small_scene):
    # Each id belongs to one stamp for good: a scene built while another thread adds keyframes
    # must never pair ids, stamps and images of different store versions.
    store = KeyframeStore(max_keyframes=6, min_interval_s=0.0, max_interval_s=0.0)
    stop, owner, bad = threading.Event(), {}, []

    def reader():
        while not stop.is_set():
            if len(store):
                scene = store.to_scene(count=4)
                for frame_id, stamp, depth in zip(scene.frame_ids, scene.stamps, scene.depth):
                    expected = small_scene.depth[int(stamp) % len(small_scene)]
                    if owner.setdefault(frame_id, stamp) != stamp or \
                            not np.array_equal(depth, expected, equal_nan=True):
                        bad.append((frame_id, stamp))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            store.offer(frame_of(small_scene, i % len(small_scene), stamp=i))
            time.sleep(0.0005)
    finally:
        stop.set()
        thread.join()
    assert not bad and len(owner) > 6


def test_keyframe_store_bad_input():
    with pytest.raises(ValueError, match="no keyframes"):
        KeyframeStore().to_scene()
    with pytest.raises(ValueError, match="Frame"):
        KeyframeStore().offer(np.zeros(3))
    with pytest.raises(ValueError, match="max_keyframes"):
        KeyframeStore(max_keyframes=0)
    with pytest.raises(ValueError, match="max_interval_s"):
        KeyframeStore(min_interval_s=2.0, max_interval_s=1.0)
    with pytest.raises(ValueError, match="eviction"):
        KeyframeStore(eviction="lru")
    with pytest.raises(ValueError, match="min_translation"):
        KeyframeStore(min_translation=float("nan"))


# ---- the torch backend (CUDA on the GPU machine; torch's CPU device here) ---------------------

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


def by_voxel(points, colors, voxel):
    order = np.lexsort(np.floor(points.astype(np.float64) / voxel).astype(np.int64).T)
    return points[order], colors[order]


def torch_devices():
    if importlib.util.find_spec("torch") is None:
        return ["cpu"]
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@needs_torch
@pytest.mark.parametrize("device", torch_devices())
def test_torch_backend_matches_numpy(small_scene, device):
    a, b = VoxelMap(0.02), TorchVoxelMap(0.02, device=device)
    for i in range(len(small_scene)):
        frame = frame_of(small_scene, i)
        a.integrate_frame(frame, stride=1 + i % 2)
        b.integrate_frame(frame, stride=1 + i % 2)
    rng = np.random.default_rng(0)
    extra = rng.normal(size=(2000, 3)), rng.integers(0, 256, (2000, 3), dtype=np.uint8)
    a.integrate(*extra)
    b.integrate(*extra)
    assert len(a) == len(b)
    pa, ca = by_voxel(*a.snapshot(), 0.02)
    pb, cb = by_voxel(*b.snapshot(), 0.02)
    assert pb.dtype == np.float32 and cb.dtype == np.uint8
    np.testing.assert_allclose(pa, pb, atol=1e-5)
    np.testing.assert_array_equal(ca, cb)


@needs_torch
@pytest.mark.parametrize("eviction", ["oldest", "farthest"])
def test_torch_backend_evicts_like_numpy(eviction):
    maps = [VoxelMap(0.1, max_voxels=1000, eviction=eviction),
            TorchVoxelMap(0.1, max_voxels=1000, eviction=eviction, device="cpu")]
    for vm in maps:
        vm.integrate(*cluster([0, 0, 0]), origin=[0, 0, 0])
        vm.integrate(*cluster([5, 0, 0]), origin=[5.4, 0.4, 0.4])
        for i in range(6):
            vm.integrate(*cluster([0, 2 * i, 3]), origin=[0, 2 * i, 3])
            assert len(vm) <= 1000
    a, b = (point_set(vm.points()) for vm in maps)
    assert len(a) == len(b) == len(maps[0])
    if eviction == "farthest":
        assert a == b  # distances are distinct: the same voxels survive
    else:  # ties in age may be broken differently, but never across ages
        age = {p: i for i in range(6) for p in point_set(cluster([0, 2 * i, 3])[0])}
        assert sorted(age.get(p, -1) for p in a) == sorted(age.get(p, -1) for p in b)


@needs_torch
def test_cuda_device_request():
    import torch

    if torch.cuda.is_available():
        vm = make_voxel_map(0.02, device="cuda")
        assert isinstance(vm, TorchVoxelMap) and vm.device.startswith("cuda")
    else:
        with pytest.raises(ValueError, match="no CUDA device"):
            make_voxel_map(0.02, device="cuda")
