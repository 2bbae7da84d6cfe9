"""TorchVoxelMap's Triton frame path against the numpy VoxelMap.

Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), where
the arithmetic is numpy's: the maps must then be identical. On CUDA the same tests run natively;
fp contraction is disabled there, but a point within rounding of a voxel boundary may still bin
differently, so a tiny fraction of voxels may differ.
"""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

from gs_reasoner_ros.scene_memory import voxel_kernels  # noqa: E402
from gs_reasoner_ros.scene import load_3dmatch  # noqa: E402
from gs_reasoner_ros.scene_memory import Frame, TorchVoxelMap, VoxelMap  # noqa: E402
from gs_reasoner_ros.synthetic import synthetic_scene  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EXACT = DEVICE == "cpu"  # the interpreter computes with numpy, in numpy's order

pytestmark = pytest.mark.skipif(not voxel_kernels.available(torch.device(DEVICE)),
                                reason="triton is not importable (or no CUDA and TRITON_INTERPRET unset)")


def kernel_map(voxel_size=0.02, **kwargs) -> TorchVoxelMap:
    vm = TorchVoxelMap(voxel_size, device=DEVICE, **kwargs)
    assert vm._kernels is not None  # the frame path under test, not the torch one
    return vm


def frame_of(scene, i, stride_stamp=0.0):
    return Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], float(i) + stride_stamp)


def plane_frame(rng, x=0.0, h=30, w=40, f=100.0, depth=1.0, stamp=0.0) -> Frame:
    """A camera at (x, 0, 0) looking down +z at a slightly rough wall: pixels 1 cm apart at
    1 m, so about four share each 2 cm voxel; random colours make every pixel count."""
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    z = (depth + 0.01 * rng.random((h, w))).astype(np.float32)
    pose = np.eye(4)
    pose[0, 3] = x
    return Frame(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), z, K, pose, stamp)


def rows_sorted(vm):
    p, c = vm.snapshot()
    order = np.lexsort((c[:, 2], c[:, 1], c[:, 0], p[:, 2], p[:, 1], p[:, 0]))
    return p[order], c[order]


def assert_same_map(ref: VoxelMap, got: TorchVoxelMap, points: int) -> None:
    """Same voxels with the same centroids and colours; on CUDA at most ~1e-4 of the `points`
    integrated may have binned differently (each moves at most two voxels)."""
    if EXACT:
        assert len(got) == len(ref)
        pr, cr = rows_sorted(ref)
        pg, cg = rows_sorted(got)
        np.testing.assert_array_equal(pg, pr)
        np.testing.assert_array_equal(cg, cr)
        return
    allowed = 2 * int(np.ceil(1e-4 * points))

    def table(vm):
        p, c = vm.snapshot()
        cells = np.floor(p.astype(np.float64) / vm.voxel_size).astype(np.int64)
        return {tuple(k): (tuple(pp), tuple(cc)) for k, pp, cc in zip(cells, p, c)}

    a, b = table(ref), table(got)
    differing = len(a.keys() ^ b.keys()) + sum(a[k] != b[k] for k in a.keys() & b.keys())
    assert differing <= allowed, f"{differing} voxels differ, {allowed} allowed"


def integrate_both(frames, stride=1, **kwargs):
    ref, got = VoxelMap(**kwargs), kernel_map(**kwargs)
    total = 0
    for frame in frames:
        with np.errstate(invalid="ignore"):  # inf depth: inf * 0 and casts of inf, then masked
            n = ref.integrate_frame(frame, stride)
            assert got.integrate_frame(frame, stride) == n
        total += n
    return ref, got, total


def test_inactive_lanes_never_match_a_table_entry():
    from gs_reasoner_ros.scene_memory import voxel_keys as sm

    assert voxel_kernels.NEVER not in (sm.EMPTY, sm.GONE) and voxel_kernels.NEVER < 0


def test_real_frames_in_a_row_match_numpy(rgbd_3dmatch):
    """Three 3DMatch frames (every 4th pixel) into one map: the later ones merge into the
    voxels of the earlier ones, and into voxels that the torch path (integrate) created."""
    scene = load_3dmatch(rgbd_3dmatch, names=["frame-000000", "frame-000001", "frame-000002"])
    ref, got = VoxelMap(0.02), kernel_map(0.02)
    rng = np.random.default_rng(0)
    seed_pts = scene.poses[0][:3, 3] + rng.normal(scale=0.5, size=(3000, 3)) + [0, 0, 1.5]
    seed_cols = rng.integers(0, 256, (3000, 3), dtype=np.uint8)
    ref.integrate(seed_pts, seed_cols)
    got.integrate(seed_pts, seed_cols)
    total = 3000
    for i in range(3):
        frame = frame_of(scene, i)
        n = ref.integrate_frame(frame, stride=4)
        assert got.integrate_frame(frame, stride=4) == n > 10_000
        total += n
        assert abs(len(got) - len(ref)) <= (0 if EXACT else 2 * int(np.ceil(1e-4 * total)))
    assert_same_map(ref, got, total)


def test_colour_at_another_resolution():
    """Colour 2/3 and 3/2 the size of depth: each point takes its nearest colour pixel."""
    scene, _ = synthetic_scene(seed=3, n_frames=1, width=96, height=72)
    rng = np.random.default_rng(1)
    for hc, wc in ((48, 64), (108, 144)):
        base = frame_of(scene, 0)
        frame = Frame(rng.integers(0, 256, (hc, wc, 3), dtype=np.uint8), base.depth, base.K, base.pose, 0.0)
        ref, got, total = integrate_both([frame], stride=3)
        assert_same_map(ref, got, total)


def test_invalid_depth_and_max_depth():
    """Zero, negative, NaN and inf depth are skipped; max_depth keeps depth <= it (in float32)."""
    rng = np.random.default_rng(2)
    frame = plane_frame(rng, h=24, w=32)
    z = frame.depth
    z[::5, ::3] = 0.0
    z[1, :] = np.nan
    z[2, :] = -1.0
    z[3, ::2] = np.inf
    at = np.float32(z[10, 10])
    z[11, :4] = at
    z[12, :4] = np.nextafter(at, np.float32(2))  # one float32 step beyond
    # the limit exactly, and a hair below it (rounds to it in float32: still kept, as in numpy)
    for limit in (float(at), float(at) - 1e-9):
        ref, got, total = integrate_both([frame], max_depth=limit)
        with np.errstate(invalid="ignore"):
            assert total == np.count_nonzero((z > 0) & (z <= at))
        assert_same_map(ref, got, total)
    ref, got, total = integrate_both([frame])  # inf is valid depth but no voxel: counted, not mapped
    assert total == np.count_nonzero(z > 0)
    assert_same_map(ref, got, total)


def test_far_pose_computes_in_float64():
    """Beyond 2**15 voxels from the origin the points are computed in float64, as numpy does:
    float32 there would round positions by about 1/256 voxel and move centroids."""
    scene, _ = synthetic_scene(seed=4, n_frames=2, width=96, height=72)
    frames = []
    for i in range(2):
        f = frame_of(scene, i)
        pose = f.pose.copy()
        pose[:3, 3] += [1234.567, -891.0, 700.3]  # 62k voxels of 2 cm out
        frames.append(Frame(f.rgb, f.depth, f.K, pose, float(i)))
    ref, got, total = integrate_both(frames, stride=2)
    assert_same_map(ref, got, total)


def test_points_outside_the_key_range_are_skipped():
    """A camera at the edge of the +-2**20-voxel key range looking across it: points beyond are
    counted as integrated (as numpy does) but make no voxel."""
    rng = np.random.default_rng(5)
    frame = plane_frame(rng, h=24, w=32, depth=0.5)
    pose = np.array([[0, 0, 1, 2 ** 20 * 0.02 - 0.3], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1.0]])
    frame = Frame(frame.rgb, (0.2 + rng.random((24, 32))).astype(np.float32), frame.K, pose, 0.0)
    ref, got, total = integrate_both([frame])
    assert total == 24 * 32
    assert 0 < len(ref) < total / 4 * 3  # some points fell outside
    assert_same_map(ref, got, total)


def test_oldest_eviction_drops_exactly_the_oldest_frame_then_probes_past_tombstones():
    """Three frames on disjoint walls; the cap is chosen so that eviction after the third drops
    exactly the first frame's voxels (no ties in age at the cut): the map then equals one built
    from frames 2 and 3 alone. Frame 1 again has to probe past its own keys' tombstones, and
    evicts frame 2 in turn."""
    rng = np.random.default_rng(6)
    frames = [plane_frame(rng, x=10.0 * i, stamp=i) for i in range(3)]
    sizes = [len(integrate_both([frame])[0]) for frame in frames]
    a, b, c = sizes
    cap = next(m for m in range(a + b, a + b + c) if int(m * 0.9) == b + c)
    ref, got, total = integrate_both(frames, max_voxels=cap, eviction="oldest")
    assert got.evicted == ref.evicted == a and got._gone == a  # tombstones present
    assert_same_map(integrate_both(frames[1:])[0], got, total)
    assert_same_map(ref, got, total)
    total += ref.integrate_frame(frames[0])
    got.integrate_frame(frames[0])
    assert got.evicted == a + b and got._gone == a + b
    assert_same_map(integrate_both([frames[2], frames[0]])[0], got, total)
    assert_same_map(ref, got, total)


def test_new_voxels_after_an_eviction_start_from_zero():
    """Voxels created after an eviction reuse freed rows and must not inherit the sums left
    there: three walls of three greys, 5 m apart, each evicting most of the one before; every
    voxel left has exactly its wall's grey."""
    rng = np.random.default_rng(10)
    grey = {0: 200, 5: 0, 10: 100}
    vm = kernel_map(max_voxels=400)
    for i, (x, value) in enumerate(grey.items()):
        frame = plane_frame(rng, x=float(x), stamp=i)
        frame.rgb[:] = value
        vm.integrate_frame(frame)
    assert vm.evicted > 0
    points, colours = vm.snapshot()
    wall = 5 * np.round(points[:, 0] / 5).astype(int)
    expected = np.array([grey[x] for x in wall])
    np.testing.assert_array_equal(colours, np.repeat(expected[:, None], 3, axis=1))
    assert set(wall) == {5, 10}

def test_farthest_eviction_matches_numpy():
    rng = np.random.default_rng(7)
    frames = [plane_frame(rng, x=0.3 * i, depth=1.0 + 0.2 * i, stamp=i) for i in range(4)]
    ref, got, total = integrate_both(frames, max_voxels=500, eviction="farthest")
    assert ref.evicted > 0 and got.evicted == ref.evicted
    assert_same_map(ref, got, total)


def test_table_and_arrays_grow_from_tiny():
    """A map shrunk to a 16-entry table and 8 rows must grow both (re-hashing the voxels it
    holds) before and after each frame, and end equal to numpy's."""
    scene, _ = synthetic_scene(seed=8, n_frames=3, width=96, height=72)
    ref, got = VoxelMap(0.02), kernel_map(0.02)
    got._alloc(8)
    got._new_table(16)
    total = 0
    for i in range(3):
        frame = frame_of(scene, i)
        total += ref.integrate_frame(frame, stride=2)
        got.integrate_frame(frame, stride=2)
        assert 2 * (got._n + got._gone) <= got._tsize and got._n <= len(got._keys)
    assert got._tsize > 16 and len(got._keys) > 8
    assert_same_map(ref, got, total)


def test_transform_after_kernel_frames_matches_numpy():
    """transform() re-bins the kernel-built voxels on the torch path; the maps stay equal."""
    scene, _ = synthetic_scene(seed=9, n_frames=2, width=96, height=72)
    ref, got, total = integrate_both([frame_of(scene, i) for i in range(2)], stride=2)
    T = np.eye(4)
    T[:3, 3] = [0.5, -0.25, 0.1]
    ref.transform(T)
    got.transform(T)
    frame = frame_of(scene, 0)
    total += ref.integrate_frame(frame, stride=2)
    got.integrate_frame(frame, stride=2)
    assert_same_map(ref, got, total)


def test_torch_path_when_the_kernels_are_off():
    """_kernels = None (no triton, or a CPU map outside the interpreter) keeps the torch path,
    which here the interpreter would otherwise hide; it must agree with the kernel path."""
    scene, _ = synthetic_scene(seed=11, n_frames=2, width=96, height=72)
    ref, got, total = integrate_both([frame_of(scene, i) for i in range(2)], stride=2)
    old = TorchVoxelMap(0.02, device=DEVICE)
    old._kernels = None
    for i in range(2):
        old.integrate_frame(frame_of(scene, i), stride=2)
    assert_same_map(ref, old, total)
    assert_same_map(ref, got, total)


def test_bad_arguments_raise_like_numpy():
    vm = kernel_map()
    with pytest.raises(ValueError, match="needs a Frame"):
        vm.integrate_frame("not a frame")
    frame = plane_frame(np.random.default_rng(0))
    with pytest.raises(ValueError, match="stride"):
        vm.integrate_frame(frame, stride=0)
    assert len(vm) == 0


def test_module_imports_without_triton(monkeypatch):
    """With triton absent the module still imports, says so, and the map keeps its torch path."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("gs_reasoner_ros.scene_memory._voxel_kernels_without_triton",
                                                  voxel_kernels.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.HAVE_TRITON is False
    assert module.available(torch.device("cpu")) is False
    assert module.available(torch.device("cuda")) is False


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need the GPU")
@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("eviction", [None, "farthest"])
def test_captured_frames_match_numpy_through_growth_and_eviction(graphs, eviction):
    """After its first frame the map replays captured graphs; when the arrays or the table are
    reallocated (growth, or a rebuild after evictions left tombstones) the frame runs
    uncaptured and is captured again, never replayed stale. ("oldest" eviction is left out:
    all voxels of a frame share one age, and which of those tie the GPU drops first depends
    on the order its atomics handed out rows.)"""
    rng = np.random.default_rng(11)
    frames = [plane_frame(rng, x=0.3 * i, h=96, w=128, depth=1.0 + 0.05 * i, stamp=i) for i in range(28)]
    options = dict(max_voxels=6000, eviction=eviction) if eviction else dict(max_voxels=1_000_000)
    ref, got = VoxelMap(0.02, **options), kernel_map(0.02, **options)
    got.capture_graphs = graphs
    captures, total = [], 0  # kept alive, so their ids stay distinct
    for frame in frames:
        n = ref.integrate_frame(frame)
        assert got.integrate_frame(frame) == n
        total += n
        if graphs and not any(g is got._graphs for g in captures):
            captures.append(got._graphs)
        assert abs(len(got) - len(ref)) <= 2 * int(np.ceil(1e-4 * total))
    assert got.evicted == ref.evicted and (got.evicted > 0) == bool(eviction)
    assert_same_map(ref, got, total)
    if graphs:  # every frame either ran uncaptured (then was captured) or replayed a capture
        replays = sum(g.replays for g in captures)
        assert replays > 0 and len(captures) > 1 and len(captures) + replays == len(frames)


def test_warmup_compiles_without_touching_the_map():
    vm = kernel_map(0.05, max_depth=3.0)
    rng = np.random.default_rng(12)
    frame = plane_frame(rng)
    vm.integrate_frame(frame)
    before = vm.snapshot()
    assert (vm.warmup() > 0) == (DEVICE == "cuda")  # only the GPU compiles anything
    after = vm.snapshot()
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert VoxelMap(0.05).warmup() == 0.0


@pytest.mark.skipif(DEVICE != "cuda", reason="streams need the GPU")
def test_frames_on_the_map_stream_see_updates_queued_on_the_callers_stream():
    """Frames run on the map's own stream, integrate() (the torch path) on the caller's, which
    another thread keeps busy with matmuls as the model would: each must see the other's
    updates, in order."""
    import threading

    stop = threading.Event()

    def busy():
        a = torch.randn(4096, 4096, device=DEVICE) / 64.0
        while not stop.is_set():
            for _ in range(4):
                a = torch.tanh(a @ a)
            torch.cuda.current_stream().synchronize()

    rng = np.random.default_rng(13)
    frames = [plane_frame(rng, x=0.1 * i, h=48, w=64, stamp=i) for i in range(6)]
    extra = [(rng.normal(scale=0.3, size=(500, 3)) + [0.2 * i, 0, 1], rng.integers(0, 256, (500, 3), dtype=np.uint8))
             for i in range(6)]
    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        ref, got, total = VoxelMap(0.02), kernel_map(0.02), 0
        for frame, (points, colours) in zip(frames, extra):
            total += ref.integrate(points, colours) + ref.integrate_frame(frame)
            got.integrate(points, colours)
            got.integrate_frame(frame)
    finally:
        stop.set()
        thread.join()
    assert got._stream is not None and got._stream != torch.cuda.current_stream()
    assert_same_map(ref, got, total)


@pytest.mark.skipif(DEVICE != "cuda", reason="warm-up compiles only on the GPU")
def test_kernels_that_fail_in_warmup_leave_the_torch_path(monkeypatch):
    vm = kernel_map(0.05)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setattr(voxel_kernels, "insert", broken)
    vm.warmup()
    assert vm._kernels is None and "no kernel image" in vm.kernel_error
    rng = np.random.default_rng(14)
    frame = plane_frame(rng)
    ref = VoxelMap(0.05)
    assert vm.integrate_frame(frame) == ref.integrate_frame(frame) and len(vm) == len(ref)
