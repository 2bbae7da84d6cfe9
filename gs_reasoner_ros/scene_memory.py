"""What the node remembers of the scene: a bounded store of keyframes (what the model sees) and
an incremental coloured voxel map (what RViz and the bird's-eye view show).

Both are ROS-free and thread-safe: the node integrates from its intake thread and reads from its
query thread, so every public method takes the object's lock.

The voxel map is a persistent open-addressing hash (linear probing, vectorised over a whole
frame in numpy) from packed integer voxel coordinates to dense slots holding running sums. A
frame costs O(its pixels), never O(map size): nothing is re-sorted or re-scanned per frame, and
eviction costs O(evicted voxels). TorchVoxelMap runs the same algorithm on torch tensors (CUDA).
"""
from __future__ import annotations

import contextlib
import itertools
import threading
import time
from dataclasses import dataclass

import numpy as np

from .geometry import check_intrinsics, check_transform
from .scene import Scene

_EMPTY = -1
_GONE = -2  # tombstone of an evicted key: probing walks past it, inserting never reuses it
_BITS = 21  # per axis: +-2**20 voxels (+-21 km at 2 cm)
_OFFSET = 1 << (_BITS - 1)
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: top bits of key * 2**64/phi
_HASH_MUL_SIGNED = int(_HASH_MUL) - (1 << 64)  # the same bits as int64, for torch
_FIELD = (1 << _BITS) - 1
# Run sums pack three 21-bit fields in one int64: a point's offset inside its voxel in steps of
# 1/2048 voxel (11 bits; 0.01 mm at 2 cm) or a colour channel (8 bits), times at most 1023
# points per run (10 bits), so one integer reduceat sums three axes or channels at once.
_FRAC = 2048
_MAX_RUN = 1023


@dataclass
class Frame:
    """One synced RGB-D frame with its camera pose in the world frame."""
    rgb: np.ndarray  # (Hc,Wc,3) uint8
    depth: np.ndarray  # (H,W) float32 metres, 0/NaN = no measurement
    K: np.ndarray  # (3,3) intrinsics of the depth image
    pose: np.ndarray  # (4,4) camera-to-world, optical axes
    stamp: float  # seconds

    def __post_init__(self):
        rgb, depth = np.asarray(self.rgb), np.asarray(self.depth)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
            raise ValueError(f"rgb must be uint8 (H,W,3), got {rgb.dtype} {rgb.shape}")
        if depth.ndim != 2 or depth.size == 0:
            raise ValueError(f"depth must be (H,W), got shape {depth.shape}")
        if not np.issubdtype(depth.dtype, np.floating):
            raise ValueError(f"depth must be float metres, got {depth.dtype} (convert 16UC1 millimetres first)")
        hc, wc = rgb.shape[:2]
        h, w = depth.shape
        if abs(hc * w - wc * h) > max(h, w):
            raise ValueError(f"colour {wc}x{hc} and depth {w}x{h} must have the same aspect ratio")
        self.rgb = rgb
        self.depth = depth.astype(np.float32, copy=False)
        self.K = check_intrinsics(self.K)
        self.pose = check_transform(self.pose, "pose")
        stamp = float(self.stamp)
        if not np.isfinite(stamp):
            raise ValueError(f"stamp must be finite, got {self.stamp}")
        self.stamp = stamp


def _check_eviction(eviction: str) -> str:
    if eviction not in ("oldest", "farthest"):
        raise ValueError(f"eviction must be 'oldest' or 'farthest', got {eviction!r}")
    return eviction


# ---- voxel map ----------------------------------------------------------------------

class VoxelMap:
    """Coloured voxel map: each voxel holds the running average of the points and colours that
    fell into it. Bounded: beyond `max_voxels` it drops the least recently seen voxels
    ("oldest") or those farthest from the last camera ("farthest") down to 90 % of the cap, so
    the cost of compacting is paid once per many frames.

    device="cpu" runs on numpy; device="cuda" (or "cuda:N") gives a TorchVoxelMap, the same
    algorithm on torch tensors. Read-outs are numpy arrays either way."""

    def __new__(cls, *args, **kwargs):
        device = kwargs.get("device", args[4] if len(args) > 4 else "cpu")
        if cls is VoxelMap and isinstance(device, str) and device.startswith("cuda"):
            cls = TorchVoxelMap
        return super().__new__(cls)

    def __init__(self, voxel_size: float = 0.02, max_voxels: int = 2_000_000, eviction: str = "oldest",
                 max_depth: float | None = None, device: str = "cpu"):
        if not (np.isfinite(voxel_size) and voxel_size > 0):
            raise ValueError(f"voxel_size must be a positive number of metres, got {voxel_size}")
        if int(max_voxels) < 1:
            raise ValueError(f"max_voxels must be positive, got {max_voxels}")
        if max_depth is not None and not max_depth > 0:
            raise ValueError(f"max_depth must be positive or None, got {max_depth}")
        self.device = self._check_device(device)
        self.voxel_size = float(voxel_size)
        self.max_voxels = int(max_voxels)
        self.eviction = _check_eviction(eviction)
        self.max_depth = max_depth
        self.evicted = 0  # voxels dropped by the cap since the last clear()
        self._lock = threading.Lock()
        self._ray_cache: dict = {}
        self._reset()

    # -- public API --

    def integrate_frame(self, frame: Frame, stride: int = 1) -> int:
        """Fuse the valid depth pixels (every `stride`-th) of `frame` with their colours.
        Returns the number of points integrated."""
        if not isinstance(frame, Frame):
            raise ValueError(f"integrate_frame needs a Frame, got {type(frame).__name__}")
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        xyz, colors = self._frame_points(frame, int(stride))
        with self._lock:
            self._integrate(xyz, colors, frame.pose[:3, 3])
            self._size = self._n
        return len(colors)

    def integrate(self, points, colors, origin=None) -> int:
        """Fuse world points (N,3) with uint8 colours (N,3); non-finite points are skipped.
        `origin` (the sensor position) is what "farthest" eviction measures from; by default
        the mean of the points. Returns the number of points integrated."""
        pts = np.asarray(points)
        cols = np.asarray(colors)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must be (N,3), got {pts.shape}")
        if cols.shape != pts.shape:
            raise ValueError(f"colors must be (N,3) like points {pts.shape}, got {cols.shape}")
        if cols.dtype != np.uint8:
            raise ValueError(f"colors must be uint8, got {cols.dtype}")
        ok = np.all(np.isfinite(pts), axis=1)
        pts, cols = pts[ok].astype(np.float64), cols[ok]
        if origin is None:
            origin = pts.mean(axis=0) if len(pts) else np.zeros(3)
        origin = np.asarray(origin, dtype=np.float64)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise ValueError(f"origin must be a finite (3,) point, got {origin}")
        scaled = pts * (1.0 / self.voxel_size)
        with self._lock:
            self._integrate([scaled[:, 0], scaled[:, 1], scaled[:, 2]], cols, origin)
            self._size = self._n
        return len(pts)

    def points(self) -> np.ndarray:
        """(M,3) float32 voxel centroids (running average of the points in each voxel)."""
        with self._lock:
            return self._numpy(self._centroids()).astype(np.float32)

    def colors(self) -> np.ndarray:
        """(M,3) uint8 average colour of each voxel, in the order of points()."""
        with self._lock:
            return self._numpy(self._mean_colors())

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(points, colors) taken under one lock, so they always match."""
        with self._lock:
            return self._numpy(self._centroids()).astype(np.float32), self._numpy(self._mean_colors())

    def __len__(self) -> int:
        return self._size  # set after each whole update: never waits for, nor sees inside, one

    def clear(self) -> None:
        """Forget every voxel."""
        with self._lock:
            self._reset()

    def warmup(self) -> float:
        """Compile now what the first frame would compile (the Triton kernels of a CUDA map), so
        the first camera frame is not delayed; the map itself is not touched. Returns seconds."""
        return 0.0

    def transform(self, T) -> None:
        """Move the whole map by the rigid 4x4 `T` (re-anchoring after a relocalisation). Voxels
        are re-binned at their moved centroids with their mean colours, so each counts as one
        observation from here on and eviction ages restart."""
        T = check_transform(T, "T")
        with self._lock:
            pts = self._numpy(self._centroids()).astype(np.float64)
            cols = np.ascontiguousarray(self._numpy(self._mean_colors()))
            origin = T[:3, :3] @ self._last_origin + T[:3, 3]
            self._reset()
            if len(pts) == 0:
                return
            moved = (pts @ T[:3, :3].T + T[:3, 3]) * (1.0 / self.voxel_size)
            self._integrate([np.ascontiguousarray(moved[:, i]) for i in range(3)], cols, origin)
            self._size = self._n

    # -- backend hooks (numpy here; TorchVoxelMap overrides them) --

    @staticmethod
    def _check_device(device) -> str:
        if device != "cpu":
            raise ValueError(f"VoxelMap device must be 'cpu' (numpy) or 'cuda[:N]' (torch), got {device!r}")
        return device

    @staticmethod
    def _numpy(array) -> np.ndarray:
        return array

    @staticmethod
    def _indices_where(mask):
        return np.flatnonzero(mask)

    @staticmethod
    def _range(n: int):
        return np.arange(n)

    # -- storage --
    # Per voxel (dense slots 0.._n-1): its packed key, the sum of its points' offsets inside the
    # voxel in 1/_FRAC voxel steps, the sum of colours, the point count, the integration tick
    # when it was last seen and its position in the hash table, which maps keys to slots.

    def _reset(self) -> None:
        self._n = self._size = 0
        self._tick = 0  # integration counter: the "age" that oldest-first eviction uses
        self._last_origin = np.zeros(3)
        self.evicted = 0
        self._keys = None
        self._alloc(1 << 16)
        self._new_table(min(1 << 17, 1 << max(10, (4 * self.max_voxels - 1).bit_length())))

    def _alloc(self, capacity: int) -> None:
        """(Re)size the dense per-voxel arrays, keeping the first _n entries."""
        fields = dict(_keys=((capacity,), np.int64), _sum_offset=((capacity, 3), np.float64),
                      _sum_rgb=((capacity, 3), np.float64), _count=((capacity,), np.float64),
                      _seen=((capacity,), np.int64), _tpos=((capacity,), np.int64),
                      _scratch=((capacity,), np.int64))
        keep = self._keys is not None
        for name, (shape, dtype) in fields.items():
            arr = np.zeros(shape, dtype)
            if keep:
                arr[: self._n] = getattr(self, name)[: self._n]
            setattr(self, name, arr)

    def _new_table(self, size: int) -> None:
        """A fresh hash table of `size` (a power of two) slots holding the current voxels."""
        self._tbits = int(size).bit_length() - 1
        self._tsize = size
        self._tkeys = np.full(size, _EMPTY, np.int64)
        self._tslot = np.full(size, _EMPTY, np.int64)
        self._gone = 0  # tombstones in the table
        if self._n:
            self._tpos[: self._n] = self._probe(self._keys[: self._n])
            self._tslot[self._tpos[: self._n]] = np.arange(self._n)

    def _grow_table(self, entries: int) -> None:
        size = self._tsize
        while 2 * entries > size:
            size *= 2
        self._new_table(size)

    def _reserve_table(self, new: int) -> None:
        """A table that probing for `new` more keys never fills (it must always meet an empty entry)."""
        if self._n + self._gone + new >= self._tsize:
            self._grow_table(self._n + new)

    def _reserve_rows(self, new: int) -> None:
        """Room for `new` more voxels in the dense arrays (the table is left as it is)."""
        if self._n + new > len(self._keys):
            capacity = len(self._keys)
            while self._n + new > capacity:
                capacity *= 2
            self._alloc(capacity)

    # -- integration --

    def _frame_points(self, frame: Frame, stride: int) -> tuple[list, np.ndarray]:
        """Coordinates in voxel units ([x, y, z], (N,) each) and colours (N,3) uint8 of the
        valid pixels of a frame, in image order.

        float32 (three times faster here) while the camera is within 2**15 voxels of the origin,
        where its rounding stays below 1/500 voxel; float64 beyond."""
        z = frame.depth[::stride, ::stride].reshape(-1)
        valid = z > 0  # NaN compares False, so NaN is dropped too
        if self.max_depth is not None:
            valid &= z <= self.max_depth
        scale = 1.0 / self.voxel_size
        dtype = np.float32 if np.abs(frame.pose[:3, 3]).max() * scale < 2 ** 15 else np.float64
        rx, ry = self._rays(frame.K, frame.depth.shape, stride, dtype)
        z, rx, ry = z[valid].astype(dtype, copy=False), rx[valid], ry[valid]
        R = (frame.pose[:3, :3] * scale).astype(dtype)
        t = (frame.pose[:3, 3] * scale).astype(dtype)
        xyz = []
        for i in range(3):
            c = rx * R[i, 0]
            c += ry * R[i, 1]
            c += R[i, 2]
            c *= z
            c += t[i]
            xyz.append(c)
        hc, wc = frame.rgb.shape[:2]
        h, w = frame.depth.shape
        if (hc, wc) == (h, w):  # np.take is several times faster than boolean row indexing here
            cols = np.take(frame.rgb[::stride, ::stride].reshape(-1, 3), np.flatnonzero(valid), axis=0)
        else:  # colour at another resolution (same aspect ratio): the nearest colour pixel
            row, col = np.divmod(np.flatnonzero(valid), len(range(0, w, stride)))
            cols = frame.rgb[np.minimum(row * stride * hc // h, hc - 1), np.minimum(col * stride * wc // w, wc - 1)]
        return xyz, cols

    def _rays(self, K: np.ndarray, shape: tuple, stride: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """x/z and y/z of every pixel of the strided grid (flattened), cached per camera."""
        key = (K.tobytes(), shape, stride, dtype)
        rays = self._ray_cache.get(key)
        if rays is None:
            u = (np.arange(0, shape[1], stride) - K[0, 2]) / K[0, 0]
            v = (np.arange(0, shape[0], stride) - K[1, 2]) / K[1, 1]
            rays = tuple(np.ascontiguousarray(r, dtype).reshape(-1) for r in np.broadcast_arrays(u[None, :], v[:, None]))
            if len(self._ray_cache) > 8:
                self._ray_cache.clear()
            self._ray_cache[key] = rays
        return rays

    def _voxel_keys(self, xyz: list) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """From coordinates in voxel units: packed voxel keys, packed fixed-point offsets inside
        the voxel, and the mask of points inside the key range (None when all are, as usual)."""
        ijk, frac = [], []
        for c in xyz:
            cell = np.floor(c)
            f = c - cell
            f *= _FRAC
            frac.append(np.minimum(f.astype(np.int64), _FRAC - 1))
            cell = cell.astype(np.int64)
            cell += _OFFSET
            ijk.append(cell)
        inside = None
        if min(i.min() for i in ijk) < 0 or max(i.max() for i in ijk) > _FIELD:
            inside = np.all([(i >= 0) & (i <= _FIELD) for i in ijk], axis=0)
            ijk, frac = [i[inside] for i in ijk], [f[inside] for f in frac]
        return _pack(*ijk), _pack(*frac), inside

    def _keyed_points(self, xyz: list, cols, origin):
        """The start of every integration: advance the tick, remember the origin, and return
        the packed voxel keys, in-voxel offsets and colours of the points inside the key range,
        as arrays of this backend (None when no point is left)."""
        self._tick += 1
        self._last_origin = np.asarray(origin, dtype=np.float64)
        if len(cols) == 0:
            return None
        xyz, cols = self._backend_arrays(xyz, cols)
        keys, offsets, inside = self._voxel_keys(xyz)
        colours = _pack(cols[:, 0], cols[:, 1], cols[:, 2])
        if inside is not None:
            colours = colours[inside]
            if len(keys) == 0:
                return None
        return keys, offsets, colours

    @staticmethod
    def _backend_arrays(xyz: list, cols):
        return xyz, cols

    def _integrate(self, xyz: list, cols: np.ndarray, origin) -> None:
        points = self._keyed_points(xyz, cols, origin)
        if points is None:
            return
        keys, offsets, colours = points
        # Neighbouring pixels mostly share a voxel: sum runs of equal keys first, a sort-free
        # reduction that shrinks the hash work several times for image-ordered points.
        boundary = np.empty(len(keys), bool)
        boundary[0] = True
        np.not_equal(keys[1:], keys[:-1], out=boundary[1:])
        boundary[::_MAX_RUN] = True  # keeps the packed run sums inside their bit fields
        starts = np.flatnonzero(boundary)
        run_count = np.diff(np.append(starts, len(keys))).astype(np.float64)
        run_offset = _unpack(np.add.reduceat(offsets, starts))
        run_rgb = _unpack(np.add.reduceat(colours, starts))
        slot = self._slots(keys[starts])
        # Then number the distinct slots 0..U-1 and add every run into its voxel.
        rank = np.arange(len(slot))
        self._scratch[slot] = rank  # duplicates: one writer wins and is the one that reads itself back
        touched = slot[self._scratch[slot] == rank]
        self._scratch[touched] = np.arange(len(touched))
        local = self._scratch[slot]
        u = len(touched)
        self._count[touched] += np.bincount(local, run_count, u)
        for i in range(3):
            self._sum_offset[touched, i] += np.bincount(local, run_offset[i], u)
            self._sum_rgb[touched, i] += np.bincount(local, run_rgb[i], u)
        self._seen[touched] = self._tick
        if self._n > self.max_voxels:
            self._evict()
        if 2 * (self._n + self._gone) > self._tsize:  # load <= 1/2 keeps probe chains short
            self._grow_table(self._n)

    def _hash(self, keys: np.ndarray) -> np.ndarray:
        return ((keys.view(np.uint64) * _HASH_MUL) >> np.uint64(64 - self._tbits)).view(np.int64)

    def _probe(self, keys: np.ndarray) -> np.ndarray:
        """Table positions of `keys`, claiming empty slots for keys not yet present. Vectorised
        linear probing: every round, all unresolved keys look at their current slot; keys that
        meet an empty slot write themselves there and read back who won (equal keys share the
        win, so duplicates in the batch end in the same slot); the rest step to the next slot."""
        mask = (1 << self._tbits) - 1
        pos_of = np.empty(len(keys), np.int64)
        pending = np.arange(len(keys))
        k, h = keys, self._hash(keys)
        while len(pending):
            there = self._tkeys[h]
            done = there == k
            empty = np.flatnonzero(there == _EMPTY)
            if len(empty):
                self._tkeys[h[empty]] = k[empty]
                done[empty[self._tkeys[h[empty]] == k[empty]]] = True
            pos_of[pending[done]] = h[done]
            left = ~done
            pending, k, h = pending[left], k[left], (h[left] + 1) & mask
        return pos_of

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """Dense voxel slot of every key, creating slots for new voxels (both backends)."""
        self._reserve_table(len(keys))
        pos = self._probe(keys)
        slot = self._tslot[pos]
        new = self._indices_where(slot < 0)
        if len(new):
            new_pos = pos[new]
            rank = self._range(len(new_pos))
            self._tslot[new_pos] = rank
            first = self._tslot[new_pos] == rank
            count = int(first.sum())
            self._reserve_rows(count)
            fresh = self._n + self._range(count)
            self._tslot[new_pos[first]] = fresh
            self._tpos[fresh] = new_pos[first]
            self._keys[fresh] = keys[new[first]]
            self._n += count
            slot = self._tslot[pos]
        return slot

    def _evict(self) -> None:
        """Drop voxels down to 90 % of the cap by the eviction policy. Costs O(evicted), not
        O(map): evicted keys become tombstones, and the kept voxels from the tail of the dense
        arrays move into the holes. The table is rebuilt only when tombstones fill its headroom,
        which is why it is sized for 2.5x the cap once eviction starts."""
        n, keep_n = self._n, int(self.max_voxels * 0.9)
        drop, holes, movers = self._eviction_plan(n, keep_n)
        self._tkeys[self._tpos[drop]] = _GONE
        self._gone += len(drop)
        for name in ("_keys", "_sum_offset", "_sum_rgb", "_count", "_seen", "_tpos"):
            arr = getattr(self, name)
            arr[holes] = arr[movers]
        self._tslot[self._tpos[holes]] = holes
        # New voxels take the freed rows and add into them: they must start from zero, not from
        # the sums of the voxels that were dropped or moved out of them.
        for name in ("_sum_offset", "_sum_rgb", "_count"):
            getattr(self, name)[keep_n:n] = 0
        self.evicted += n - keep_n
        self._n = keep_n
        size = self._tsize
        while size < 2.5 * self.max_voxels:
            size *= 2
        if size > self._tsize or 2 * (self._n + self._gone) > size:
            self._new_table(size)

    def _eviction_plan(self, n: int, keep_n: int):
        """(drop, holes, movers): the n - keep_n rows to drop by the policy, the dropped rows
        below keep_n (sorted), and the kept rows at or beyond keep_n that fill them."""
        if self.eviction == "oldest":
            score = -self._seen[:n].astype(np.float64)  # low score = keep
        else:
            score = np.linalg.norm(self._centroids() - self._last_origin, axis=1)
        drop = np.argpartition(score, keep_n)[keep_n:] if keep_n > 0 else np.arange(n)
        holes = np.sort(drop[drop < keep_n])
        keep_mask = np.ones(n - keep_n, bool)
        keep_mask[drop[drop >= keep_n] - keep_n] = False
        movers = keep_n + np.flatnonzero(keep_mask)  # kept voxels beyond keep_n, as many as holes
        return drop, holes, movers

    # -- read-out --

    def _centroids(self) -> np.ndarray:
        """Voxel corner plus the mean offset inside it, in metres (+0.5 step undoes the
        flooring of each offset to 1/_FRAC voxel)."""
        n = self._n
        corner = np.stack(_unpack(self._keys[:n]), axis=1).astype(np.float64) - _OFFSET
        return (corner + (self._sum_offset[:n] / self._count[:n, None] + 0.5) / _FRAC) * self.voxel_size

    def _mean_colors(self) -> np.ndarray:
        n = self._n
        return np.rint(self._sum_rgb[:n] / self._count[:n, None]).astype(np.uint8)


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
        from . import voxel_kernels

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
        self._tkeys = torch.full((size + 1,), _EMPTY, dtype=torch.int64, device=self._dev)
        self._tslot = torch.full((size + 1,), _EMPTY, dtype=torch.int64, device=self._dev)
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
            frac.append(torch.clamp(((c - cell) * _FRAC).to(torch.int64), max=_FRAC - 1))
            ijk.append(cell.to(torch.int64) + _OFFSET)
        stacked = torch.stack(ijk)
        inside = None
        if bool((stacked.min() < 0) | (stacked.max() > _FIELD)):
            inside = ((stacked >= 0) & (stacked <= _FIELD)).all(dim=0)
            ijk, frac = [i[inside] for i in ijk], [f[inside] for f in frac]
        return _pack(*ijk), _pack(*frac), inside

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
        boundary[::_MAX_RUN] = True
        starts = torch.nonzero(boundary).squeeze(1)
        ends = torch.cat([starts[1:], torch.tensor([len(keys)], device=self._dev)])
        run_count = (ends - starts).to(torch.float64)
        run_offset = torch.stack(_unpack(_segment_sums(torch, offsets, starts, ends)), 1).to(torch.float64)
        run_rgb = torch.stack(_unpack(_segment_sums(torch, colours, starts, ends)), 1).to(torch.float64)
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
        return ((keys * _HASH_MUL_SIGNED) >> (64 - self._tbits)) & ((1 << self._tbits) - 1)

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
            claim = active & (there == _EMPTY)
            self._tkeys[torch.where(claim, h, spare)] = keys
            active &= self._tkeys[h] != keys
            h = torch.where(active, (h + 1) & mask, h)
            if round_ % 4 == 0 and not bool(active.any()):
                self._tkeys[spare] = _EMPTY
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
        corner = self._torch.stack(_unpack(self._keys[:n]), 1).to(self._torch.float64) - _OFFSET
        return (corner + (self._sum_offset[:n] / self._count[:n, None] + 0.5) / _FRAC) * self.voxel_size

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


def _pack(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Three non-negative ints below 2**21 in one int64 (a in the high bits, c in the low)."""
    if isinstance(a, np.ndarray):
        a, b, c = a.astype(np.int64), b.astype(np.int64), c.astype(np.int64, copy=False)
    else:  # torch tensors
        a, b, c = a.long(), b.long(), c.long()
    packed = a << (2 * _BITS)
    packed |= b << _BITS
    packed |= c
    return packed


def _unpack(packed: np.ndarray) -> list[np.ndarray]:
    """[a, b, c] of _pack."""
    return [(packed >> (2 * _BITS)) & _FIELD, (packed >> _BITS) & _FIELD, packed & _FIELD]


# ---- keyframes ------------------------------------------------------------------------

_KEYFRAME_IDS = itertools.count()  # process-wide: an id never names two different keyframes


class KeyframeStore:
    """Bounded set of keyframes: a frame is kept when the camera moved `min_translation` metres
    or turned `min_rotation_deg` since the last keyframe, or `max_interval_s` passed, but never
    sooner than `min_interval_s` after it. The first frame is always kept. Beyond
    `max_keyframes` the oldest, or the one farthest from the newest camera, is dropped.

    Frames older than the newest keyframe are refused (offer returns False): a clock that jumps
    back is the node's cue to clear() rather than mix timelines.

    Every kept keyframe gets an id no other keyframe of the process ever gets (its content never
    changes; transform() moves only its pose); to_scene() passes them as Scene.frame_ids so the
    model's caches key on them instead of hashing pixels."""

    def __init__(self, max_keyframes: int = 64, min_translation: float = 0.15, min_rotation_deg: float = 10.0,
                 min_interval_s: float = 0.5, max_interval_s: float = 5.0, eviction: str = "oldest"):
        if int(max_keyframes) < 1:
            raise ValueError(f"max_keyframes must be positive, got {max_keyframes}")
        for name, value in (("min_translation", min_translation), ("min_rotation_deg", min_rotation_deg),
                            ("min_interval_s", min_interval_s), ("max_interval_s", max_interval_s)):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if max_interval_s < min_interval_s:
            raise ValueError(f"max_interval_s ({max_interval_s}) must be >= min_interval_s ({min_interval_s})")
        self.max_keyframes = int(max_keyframes)
        self.min_translation = float(min_translation)
        self.min_rotation_deg = float(min_rotation_deg)
        self.min_interval_s = float(min_interval_s)
        self.max_interval_s = float(max_interval_s)
        self.eviction = _check_eviction(eviction)
        self._frames: list[Frame] = []
        self._ids: list[int] = []  # parallel to _frames
        self._last: Frame | None = None  # the newest keyframe, even if evicted by "farthest"
        self._lock = threading.Lock()
        # to_scene's reuse: every change of _frames bumps _version. _scene is (version, count,
        # axis_align bytes, Scene); _images is (chosen ids, read-only rgb, depth, K stacks), kept
        # across pose changes and new alignments, which need no new image copies.
        self._version = 0
        self._scene: tuple | None = None
        self._images: tuple | None = None

    def offer(self, frame: Frame) -> bool:
        """Keep `frame` if it is a new keyframe under the policy; returns whether it was kept."""
        if not isinstance(frame, Frame):
            raise ValueError(f"offer needs a Frame, got {type(frame).__name__}")
        with self._lock:
            if not self._wanted(frame):
                return False
            self._frames.append(frame)
            self._ids.append(next(_KEYFRAME_IDS))
            self._last = frame
            if len(self._frames) > self.max_keyframes:
                victim = self._victim()
                self._frames.pop(victim)
                self._ids.pop(victim)
            self._version += 1
            return True

    def frames(self) -> list[Frame]:
        """The keyframes in time order (a copy of the list; the frames themselves are shared)."""
        with self._lock:
            return list(self._frames)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    @property
    def version(self) -> int:
        """Changes with every change of the stored keyframes (added, dropped, cleared, moved)."""
        with self._lock:
            return self._version

    def frame_id(self, frame: Frame) -> int | None:
        """The id of `frame` (this very object, as offered) while it is a stored keyframe, else None.
        E.g. to preprocess a new keyframe ahead under the key to_scene() will give it."""
        with self._lock:
            for f, frame_id in zip(self._frames, self._ids):
                if f is frame:
                    return frame_id
            return None

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._ids.clear()
            self._last = None
            self._version += 1
            self._scene = self._images = None  # let the stacked copies go with the frames

    def new_timeline(self) -> None:
        """Stamps restart (a bag loops) but the keyframes stay valid: judge the next frame as if
        it were the first, instead of refusing it as older than the newest keyframe."""
        with self._lock:
            self._last = None

    def transform(self, T) -> None:
        """Move every keyframe's pose by the rigid 4x4 `T` (re-anchoring after a relocalisation)."""
        import dataclasses

        T = check_transform(T, "T")
        with self._lock:
            moved = {id(f): dataclasses.replace(f, pose=T @ f.pose) for f in self._frames}
            if self._last is not None and id(self._last) not in moved:
                moved[id(self._last)] = dataclasses.replace(self._last, pose=T @ self._last.pose)
            self._frames = [moved[id(f)] for f in self._frames]
            self._last = None if self._last is None else moved[id(self._last)]
            self._version += 1  # the ids stay: the content did not change

    @property
    def newest_stamp(self) -> float | None:
        """Stamp of the newest keyframe, None when empty."""
        with self._lock:
            return None if self._last is None else self._last.stamp

    def to_scene(self, count: int = 32, axis_align=None) -> Scene:
        """A Scene of up to `count` keyframes chosen uniformly over the store (the authors'
        np.linspace choice), with `axis_align` (world -> model, default identity) and the
        keyframes' ids as frame_ids. Only keyframes with the newest keyframe's image sizes are
        used (the camera may have been reconfigured).

        While no keyframe was added, dropped, cleared or moved, the same count and axis_align get
        the same Scene object again; its arrays are read-only and shared, so callers must not
        assign to its fields either (make a new Scene instead)."""
        if int(count) < 1:
            raise ValueError(f"count must be positive, got {count}")
        A = np.eye(4) if axis_align is None else check_transform(axis_align, "axis_align")
        wanted = (int(count), A.tobytes())
        with self._lock:
            version, frames, ids = self._version, list(self._frames), list(self._ids)
            cached, images = self._scene, self._images
        if cached is not None and cached[:3] == (version, *wanted):
            return cached[3]
        if not frames:
            raise ValueError("no keyframes yet: the scene is empty")
        shapes = (frames[-1].rgb.shape, frames[-1].depth.shape)
        kept = [i for i, f in enumerate(frames) if (f.rgb.shape, f.depth.shape) == shapes]
        idx = np.linspace(0, len(kept) - 1, min(int(count), len(kept))).astype(int)
        chosen = [kept[i] for i in idx]
        chosen_ids = tuple(ids[i] for i in chosen)
        if images is None or images[0] != chosen_ids:
            images = (chosen_ids, *(_read_only(np.stack([getattr(frames[i], name) for i in chosen]))
                                    for name in ("rgb", "depth", "K")))
        poses = _read_only(np.stack([frames[i].pose for i in chosen]))
        stamps = _read_only(np.array([frames[i].stamp for i in chosen]))
        scene = Scene(images[1], images[2], images[3], poses, _read_only(A.copy()), stamps, chosen_ids)
        with self._lock:
            if self._version == version:  # else a newer keyframe set came meanwhile: keep nothing stale
                self._scene, self._images = (version, *wanted, scene), images
        return scene

    def _wanted(self, frame: Frame) -> bool:
        last = self._last
        if last is None:
            return True
        dt = frame.stamp - last.stamp
        if dt < self.min_interval_s:  # also refuses frames from the past
            return False
        if dt >= self.max_interval_s:
            return True
        moved = np.linalg.norm(frame.pose[:3, 3] - last.pose[:3, 3])
        cos = (np.trace(last.pose[:3, :3].T @ frame.pose[:3, :3]) - 1.0) / 2.0
        turned = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        return bool(moved >= self.min_translation or turned >= self.min_rotation_deg)

    def _victim(self) -> int:
        """Index of the keyframe to drop when over the cap (never the newest)."""
        if self.eviction == "oldest":
            return 0
        here = self._frames[-1].pose[:3, 3]
        dist = [np.linalg.norm(f.pose[:3, 3] - here) for f in self._frames[:-1]]
        return int(np.argmax(dist))


def _read_only(array: np.ndarray) -> np.ndarray:
    """`array`, marked read-only: to_scene hands the same arrays to every caller."""
    array.setflags(write=False)
    return array
