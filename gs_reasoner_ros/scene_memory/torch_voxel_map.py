"""The voxel map on torch tensors (for CUDA): VoxelMap's algorithm with torch backend hooks,
plus a frame path through the Triton kernels (voxel_kernels) replayed as CUDA graphs.

torch and the kernels are imported when a map is made, not with this module, so the numpy map
never pays for them.
"""
from __future__ import annotations

import contextlib
import itertools
import time

import numpy as np

from .frame import Frame
from .voxel_keys import EMPTY, FIELD, FRAC, HASH_MUL_SIGNED, MAX_RUN, OFFSET, pack, unpack
from .voxel_map import VoxelMap


class TorchVoxelMap(VoxelMap):
    """VoxelMap on torch tensors (for CUDA): the same hash, run reduction and eviction, with
    index_add_ (atomics) where numpy uses bincount, and segment sums from a cumulative sum
    (int64 wrap-around cancels in the difference). Also runs on torch's CPU device, which is
    how it is tested where no GPU exists.

    integrate_frame runs as two Triton kernels (voxel_kernels) where they are available: on
    CUDA, and on the CPU under Triton's interpreter (TRITON_INTERPRET=1, as in the tests).
    integrate() and transform() keep the torch path; both paths share the table and arrays."""

    pinned_upload = True  # CUDA: frames go up through pinned staging buffers (False: pageable copies)
    capture_graphs = True  # CUDA with pinned uploads: replay captured frames (False: launch one by one)
    own_stream = True  # CUDA: integrate frames on the map's own stream (False: the caller's current one)

    def __init__(self, voxel_size: float = 0.02, max_voxels: int = 2_000_000, eviction: str = "oldest",
                 max_depth: float | None = None, device: str = "cuda"):
        from . import voxel_kernels  # here, not above: triton is imported only for a torch map

        # Kept across clear(): pinning a staging buffer costs milliseconds.
        self._staging: dict = {}  # name -> (pinned host tensor, device tensor)
        self._pos_buffer = None
        self._graphs: _FrameGraphs | None = None  # the captured frame, while its key holds
        self._stream = None  # the map's CUDA stream, made on first use
        self.kernel_error = ""  # why the Triton kernels are off after warmup(), if they failed there
        super().__init__(voxel_size, max_voxels, eviction, max_depth, device)
        # None: the torch path (also how scripts/gpu/voxel_kernel_bench.py times the old path)
        self._kernels = voxel_kernels if voxel_kernels.available(self._dev) else None

    def warmup(self) -> float:
        """As VoxelMap.warmup. Kernels that fail to compile or run here (an unsupported GPU, a
        broken Triton) leave the map on the torch path, with the reason in `kernel_error`."""
        if self._kernels is None or self._dev.type != "cuda":  # the interpreter compiles nothing
            return 0.0
        t0 = time.perf_counter()
        probe = TorchVoxelMap(self.voxel_size, self.max_voxels, self.eviction, self.max_depth, self.device)
        K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
        frame = Frame(np.zeros((480, 640, 3), np.uint8), np.ones((480, 640), np.float32), K, np.eye(4), 0.0)
        try:
            probe.integrate_frame(frame)
        except Exception as err:  # noqa: BLE001 (any compiler or driver failure: the torch path still works)
            self._kernels, self.kernel_error = None, f"{type(err).__name__}: {err}"
        return time.perf_counter() - t0

    def integrate_frame(self, frame: Frame, stride: int = 1) -> int:
        """As VoxelMap.integrate_frame, by the kernels where they run (one host sync per frame)."""
        if self._kernels is None or not isinstance(frame, Frame) or int(stride) != stride or stride < 1:
            return super().integrate_frame(frame, stride)  # the torch path; raises on bad arguments
        with self._lock:
            valid = self._integrate_by_kernels(frame, int(stride))
            self._size = self._n
        return valid

    @staticmethod
    def _check_device(device) -> str:
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"bad torch device {device!r}: {err}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("VoxelMap device 'cuda' asked for, but torch sees no CUDA device")
        if dev.type not in ("cuda", "cpu"):
            raise ValueError(f"TorchVoxelMap runs on cuda or cpu, got {device!r}")
        return str(dev)

    @staticmethod
    def _numpy(array) -> np.ndarray:
        return array.cpu().numpy()

    def _reset(self) -> None:
        import torch

        self._torch = torch
        self._dev = torch.device(self.device)
        self._keys = None
        super()._reset()

    def _alloc(self, capacity: int) -> None:
        torch = self._torch
        fields = dict(_keys=((capacity,), torch.int64), _sum_offset=((capacity, 3), torch.float64),
                      _sum_rgb=((capacity, 3), torch.float64), _count=((capacity,), torch.float64),
                      _seen=((capacity,), torch.int64), _tpos=((capacity,), torch.int64))
        keep = self._keys is not None
        for name, (shape, dtype) in fields.items():
            arr = torch.zeros(shape, dtype=dtype, device=self._dev)
            if keep:
                arr[: self._n] = getattr(self, name)[: self._n]
            setattr(self, name, arr)

    def _new_table(self, size: int) -> None:
        torch = self._torch
        self._tbits = int(size).bit_length() - 1
        self._tsize = size
        # One extra slot past the end takes the masked-off writes of _probe.
        self._tkeys = torch.full((size + 1,), EMPTY, dtype=torch.int64, device=self._dev)
        self._tslot = torch.full((size + 1,), EMPTY, dtype=torch.int64, device=self._dev)
        self._gone = 0
        if self._n:
            self._tpos[: self._n] = self._probe(self._keys[: self._n])
            self._tslot[self._tpos[: self._n]] = torch.arange(self._n, device=self._dev)

    # -- the kernel path --
    # Split in steps so that scripts/gpu/voxel_kernel_bench.py can time uploads and kernels apart.

    def _integrate_by_kernels(self, frame: Frame, stride: int) -> int:
        """Fuse a frame with voxel_kernels; returns the number of valid depth pixels. The colour
        upload is queued after the first kernel, so the host copies it while the GPU inserts.

        On CUDA with pinned uploads, a frame like the one before (same sizes, stride, table and
        arrays) replays two captured CUDA graphs (upload + insert, upload + accumulate + counters
        back), so the host only copies the frame into the staging buffers: launching the kernels
        and copies one by one cost about as much as running them."""
        kernels = self._kernels
        with self._on_map_stream():
            setup = self._begin_frame(frame, stride)
            words = kernels.frame_params(self._n, frame.pose, 1.0 / self.voxel_size, self.max_depth, self._tick)
            key, graphs = self._graph_key(frame, setup), self._graphs
            if graphs is not None and graphs.key == key:
                return self._end_frame(graphs.run(frame, words))
            depth = self._upload("depth", frame.depth)
            params = self._upload("params", words)
            kernels.insert(depth, params, setup, self._tkeys, self._tslot, self._keys, self._tpos, self._tbits)
            rgb = self._upload("rgb", frame.rgb)
            kernels.accumulate(depth, rgb, params, setup, self._tslot, self._count, self._sum_offset, self._sum_rgb,
                               self._seen)
            counters = params[:2].tolist()  # the frame's one host sync
            if self._dev.type == "cuda" and self.pinned_upload and self.capture_graphs:  # compiled: capture
                self._graphs = _FrameGraphs(self, setup, key)
        return self._end_frame(counters)

    def _graph_key(self, frame: Frame, setup) -> tuple:
        """What a captured frame depends on besides the staged inputs: sizes, launch options,
        and the addresses of every buffer the kernels touch."""
        buffers = (self._tkeys, self._tslot, self._keys, self._tpos, self._count, self._sum_offset, self._sum_rgb,
                   self._seen, setup.positions, setup.u, setup.v)
        return (frame.depth.shape, frame.rgb.shape, setup.stride, setup.far, setup.has_max_depth, self._tbits,
                *(b.data_ptr() for b in buffers))

    def _begin_frame(self, frame: Frame, stride: int):
        """Tick, origin and room for the frame; its grid and ray tables for the kernels."""
        h, w = frame.depth.shape
        n_pix = len(range(0, h, stride)) * len(range(0, w, stride))
        self._tick += 1
        self._last_origin = frame.pose[:3, 3].astype(np.float64)
        self._reserve_table(n_pix)  # every grid pixel may be a new voxel: the kernels never resize
        self._reserve_rows(n_pix)
        far = bool(np.abs(frame.pose[:3, 3]).max() * (1.0 / self.voxel_size) >= 2 ** 15)  # as _frame_points
        u, v = self._ray_axes(frame.K, frame.depth.shape, stride, np.float64 if far else np.float32)
        if self._pos_buffer is None or len(self._pos_buffer) < n_pix:
            self._pos_buffer = self._torch.empty(n_pix, dtype=self._torch.int32, device=self._dev)
        return self._kernels.FrameSetup(stride, far, self.max_depth is not None, u, v, self._pos_buffer)

    def _end_frame(self, counters: list) -> int:
        """Take the counters read back (voxels, valid pixels), then evict and grow as needed."""
        self._n, valid = counters
        if self._n > self.max_voxels:
            self._evict()
        if 2 * (self._n + self._gone) > self._tsize:
            self._grow_table(self._n)
        return valid

    def _ray_axes(self, K: np.ndarray, shape: tuple, stride: int, dtype):
        """Ray x/z per grid column and y/z per grid row on the device: the factors of
        VoxelMap._rays' tables, with the same values."""
        key = ("axes", K.tobytes(), shape, stride, dtype)
        axes = self._ray_cache.get(key)
        if axes is None:
            u = (np.arange(0, shape[1], stride) - K[0, 2]) / K[0, 0]
            v = (np.arange(0, shape[0], stride) - K[1, 2]) / K[1, 1]
            axes = tuple(self._torch.from_numpy(a.astype(dtype)).to(self._dev) for a in (u, v))
            if len(self._ray_cache) > 8:
                self._ray_cache.clear()
            self._ray_cache[key] = axes
        return axes

    def _upload(self, name: str, array: np.ndarray):
        """`array` as a device tensor. On CUDA through a pinned buffer kept per name (one DMA,
        queued without waiting); reusing it next frame is safe because each frame ends with a
        host sync."""
        torch = self._torch
        array = np.ascontiguousarray(array)
        if self._dev.type != "cuda":  # the interpreter writes every argument back: never into the frame
            return torch.tensor(array)
        if not self.pinned_upload:
            return torch.from_numpy(array).to(self._dev)
        pair = self._staging.get(name)
        if pair is None or pair[0].shape != array.shape:
            host = torch.from_numpy(array).pin_memory()
            pair = self._staging[name] = (host, torch.empty_like(host, device=self._dev))
        else:
            np.copyto(pair[0].numpy(), array)
        pair[1].copy_(pair[0], non_blocking=True)
        return pair[1]

    @contextlib.contextmanager
    def _on_map_stream(self):
        """The map's device (Triton launches on the current one) and the map's own CUDA stream,
        so a frame is never queued behind the model's work on the default stream (during a
        question, a decode step or more). The stream first waits for what the caller's stream
        has queued (updates of the torch path: integrate, transform, eviction)."""
        if self._dev.type != "cuda":
            yield
            return
        torch = self._torch
        with torch.cuda.device(self._dev):
            if not self.own_stream:
                yield
                return
            if self._stream is None:
                self._stream = torch.cuda.Stream(self._dev)
            self._stream.wait_stream(torch.cuda.current_stream(self._dev))
            with torch.cuda.stream(self._stream):
                yield

    # -- the torch path --

    def _frame_points(self, frame: Frame, stride: int) -> tuple[list, object]:
        torch = self._torch
        depth = torch.from_numpy(np.ascontiguousarray(frame.depth[::stride, ::stride])).to(self._dev)
        z = depth.reshape(-1)
        valid = z > 0
        if self.max_depth is not None:
            valid &= z <= self.max_depth
        scale = 1.0 / self.voxel_size
        far = np.abs(frame.pose[:3, 3]).max() * scale >= 2 ** 15
        dtype = torch.float64 if far else torch.float32
        rx, ry = self._rays(frame.K, frame.depth.shape, stride, np.float64 if far else np.float32)
        z, rx, ry = z[valid].to(dtype), rx[valid], ry[valid]
        R = (frame.pose[:3, :3] * scale).tolist()
        t = (frame.pose[:3, 3] * scale).tolist()
        xyz = [(rx * R[i][0] + ry * R[i][1] + R[i][2]) * z + t[i] for i in range(3)]
        hc, wc = frame.rgb.shape[:2]
        h, w = frame.depth.shape
        rgb = torch.from_numpy(np.ascontiguousarray(frame.rgb)).to(self._dev)
        if (hc, wc) == (h, w):
            cols = rgb[::stride, ::stride].reshape(-1, 3)[valid]
        else:
            idx = torch.nonzero(valid).squeeze(1)
            row, col = idx // len(range(0, w, stride)), idx % len(range(0, w, stride))
            cols = rgb[torch.clamp(row * stride * hc // h, max=hc - 1), torch.clamp(col * stride * wc // w, max=wc - 1)]
        return xyz, cols

    def _rays(self, K: np.ndarray, shape: tuple, stride: int, dtype):
        """The numpy ray tables, kept on the device."""
        key = ("device", K.tobytes(), shape, stride, dtype)
        rays = self._ray_cache.get(key)
        if rays is None:
            rays = tuple(self._torch.from_numpy(r).to(self._dev) for r in super()._rays(K, shape, stride, dtype))
            self._ray_cache[key] = rays
        return rays

    def _voxel_keys(self, xyz: list):
        torch = self._torch
        ijk, frac = [], []
        for c in xyz:
            cell = torch.floor(c)
            frac.append(torch.clamp(((c - cell) * FRAC).to(torch.int64), max=FRAC - 1))
            ijk.append(cell.to(torch.int64) + OFFSET)
        stacked = torch.stack(ijk)
        inside = None
        if bool((stacked.min() < 0) | (stacked.max() > FIELD)):
            inside = ((stacked >= 0) & (stacked <= FIELD)).all(dim=0)
            ijk, frac = [i[inside] for i in ijk], [f[inside] for f in frac]
        return pack(*ijk), pack(*frac), inside

    def _backend_arrays(self, xyz: list, cols):
        if not isinstance(cols, np.ndarray):  # from _frame_points: tensors already
            return xyz, cols
        # from integrate() or transform(): numpy in, tensors from here on
        to_device = [self._torch.from_numpy(np.ascontiguousarray(a)).to(self._dev) for a in (*xyz, cols)]
        return to_device[:3], to_device[3]

    def _integrate(self, xyz: list, cols, origin) -> None:
        torch = self._torch
        points = self._keyed_points(xyz, cols, origin)
        if points is None:
            return
        keys, offsets, colours = points
        boundary = torch.ones(len(keys), dtype=torch.bool, device=self._dev)
        boundary[1:] = keys[1:] != keys[:-1]
        boundary[::MAX_RUN] = True
        starts = torch.nonzero(boundary).squeeze(1)
        ends = torch.cat([starts[1:], torch.tensor([len(keys)], device=self._dev)])
        run_count = (ends - starts).to(torch.float64)
        run_offset = torch.stack(unpack(_segment_sums(torch, offsets, starts, ends)), 1).to(torch.float64)
        run_rgb = torch.stack(unpack(_segment_sums(torch, colours, starts, ends)), 1).to(torch.float64)
        slot = self._slots(keys[starts])
        self._count.index_add_(0, slot, run_count)
        self._sum_offset.index_add_(0, slot, run_offset)
        self._sum_rgb.index_add_(0, slot, run_rgb)
        self._seen[slot] = self._tick
        if self._n > self.max_voxels:
            self._evict()
        if 2 * (self._n + self._gone) > self._tsize:
            self._grow_table(self._n)

    def _hash(self, keys):
        # int64 multiply wraps like uint64; after the arithmetic shift the mask keeps the top bits
        return ((keys * HASH_MUL_SIGNED) >> (64 - self._tbits)) & ((1 << self._tbits) - 1)

    def _probe(self, keys):
        """As VoxelMap._probe, but on full-length arrays with an activity mask: writes of
        inactive keys go to the spare slot past the end, so the only host sync per round is
        the check, every 4 rounds, whether any key is still unresolved (on a GPU each
        compaction would be one)."""
        torch = self._torch
        mask = (1 << self._tbits) - 1
        spare = self._tsize
        h = self._hash(keys)
        active = torch.ones(len(keys), dtype=torch.bool, device=self._dev)
        for round_ in itertools.count(1):
            there = self._tkeys[h]
            claim = active & (there == EMPTY)
            self._tkeys[torch.where(claim, h, spare)] = keys
            active &= self._tkeys[h] != keys
            h = torch.where(active, (h + 1) & mask, h)
            if round_ % 4 == 0 and not bool(active.any()):
                self._tkeys[spare] = EMPTY
                return h

    @staticmethod
    def _indices_where(mask):
        return mask.nonzero().squeeze(1)

    def _range(self, n: int):
        return self._torch.arange(n, device=self._dev)

    def _eviction_plan(self, n: int, keep_n: int):
        torch = self._torch
        if self.eviction == "oldest":
            score = -self._seen[:n].to(torch.float64)
        else:
            origin = torch.tensor(self._last_origin, device=self._dev)
            score = torch.linalg.norm(self._centroids() - origin, dim=1)
        drop = torch.topk(score, n - keep_n).indices
        holes = torch.sort(drop[drop < keep_n]).values
        keep_mask = torch.ones(n - keep_n, dtype=torch.bool, device=self._dev)
        keep_mask[drop[drop >= keep_n] - keep_n] = False
        movers = keep_n + torch.nonzero(keep_mask).squeeze(1)
        return drop, holes, movers

    def _centroids(self):
        n = self._n
        corner = self._torch.stack(unpack(self._keys[:n]), 1).to(self._torch.float64) - OFFSET
        return (corner + (self._sum_offset[:n] / self._count[:n, None] + 0.5) / FRAC) * self.voxel_size

    def _mean_colors(self):
        n = self._n
        return self._torch.round(self._sum_rgb[:n] / self._count[:n, None]).to(self._torch.uint8)


class _FrameGraphs:
    """The GPU work of one TorchVoxelMap frame as two CUDA graphs over the map's staging
    buffers; valid while the map's _graph_key for a frame equals `key`."""

    def __init__(self, vmap: TorchVoxelMap, setup, key: tuple):
        torch, kernels = vmap._torch, vmap._kernels
        self.key = key
        self._torch = torch
        # (pinned host, device) pairs; the device halves are kept referenced for as long as the
        # graphs that write them live
        (self.depth, depth), (self.words, words), (self.rgb, rgb) = self._buffers = \
            [vmap._staging[name] for name in ("depth", "params", "rgb")]
        self.counters = torch.empty(2, dtype=torch.int64, pin_memory=True)
        self.replays = 0
        self.insert, self.accumulate = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        # thread_local: the model's thread may use the GPU while the intake thread captures
        with torch.cuda.graph(self.insert, capture_error_mode="thread_local"):
            depth.copy_(self.depth, non_blocking=True)
            words.copy_(self.words, non_blocking=True)
            kernels.insert(depth, words, setup, vmap._tkeys, vmap._tslot, vmap._keys, vmap._tpos, vmap._tbits)
        with torch.cuda.graph(self.accumulate, capture_error_mode="thread_local"):
            rgb.copy_(self.rgb, non_blocking=True)
            kernels.accumulate(depth, rgb, words, setup, vmap._tslot, vmap._count, vmap._sum_offset, vmap._sum_rgb,
                               vmap._seen)
            self.counters.copy_(words[:2], non_blocking=True)

    def run(self, frame: Frame, words: np.ndarray) -> list:
        """Stage the frame, replay, wait; returns the counters (voxels, valid pixels)."""
        np.copyto(self.depth.numpy(), frame.depth)
        np.copyto(self.words.numpy(), words)
        self.insert.replay()
        np.copyto(self.rgb.numpy(), frame.rgb)  # while the GPU inserts
        self.accumulate.replay()
        self.replays += 1
        self._torch.cuda.current_stream().synchronize()
        return self.counters.tolist()


def _segment_sums(torch, values, starts, ends):
    """Sums of values[starts[i]:ends[i]] from one cumulative sum (int64 wrap-around cancels)."""
    cs = torch.cat([torch.zeros(1, dtype=values.dtype, device=values.device), torch.cumsum(values, 0)])
    return cs[ends] - cs[starts]
