"""The coloured voxel map (what RViz and the bird's-eye view show): the shared algorithm, and
its numpy backend.

The map is a persistent open-addressing hash (linear probing, vectorised over a whole frame in
numpy) from packed voxel keys (voxel_keys) to dense slots holding running sums. A frame costs
O(its pixels), never O(map size): nothing is re-sorted or re-scanned per frame, and eviction
costs O(evicted voxels). TorchVoxelMap (torch_voxel_map) runs the same algorithm on torch
tensors by overriding the backend hooks here.

Thread-safe: the node integrates from its intake thread and reads from its query thread, so
every public method takes the map's lock.
"""
from __future__ import annotations

import threading

import numpy as np

from ..geometry import check_transform
from .eviction import check_eviction
from .frame import Frame
from .voxel_keys import EMPTY, FIELD, FRAC, GONE, HASH_MUL, MAX_RUN, OFFSET, pack, unpack


class VoxelMap:
    """Coloured voxel map: each voxel holds the running average of the points and colours that
    fell into it. Bounded: beyond `max_voxels` it drops the least recently seen voxels
    ("oldest") or those farthest from the last camera ("farthest") down to 90 % of the cap, so
    the cost of compacting is paid once per many frames.

    This class is the numpy backend and the base of TorchVoxelMap, which overrides the backend
    hooks below; make_voxel_map() picks one by device. Read-outs are numpy arrays either way."""

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
        self.eviction = check_eviction(eviction)
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
            raise ValueError(f"VoxelMap device must be 'cpu' (numpy; make_voxel_map gives the torch map for "
                             f"'cuda[:N]'), got {device!r}")
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
    # voxel in 1/FRAC voxel steps, the sum of colours, the point count, the integration tick
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
        self._tkeys = np.full(size, EMPTY, np.int64)
        self._tslot = np.full(size, EMPTY, np.int64)
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
            f *= FRAC
            frac.append(np.minimum(f.astype(np.int64), FRAC - 1))
            cell = cell.astype(np.int64)
            cell += OFFSET
            ijk.append(cell)
        inside = None
        if min(i.min() for i in ijk) < 0 or max(i.max() for i in ijk) > FIELD:
            inside = np.all([(i >= 0) & (i <= FIELD) for i in ijk], axis=0)
            ijk, frac = [i[inside] for i in ijk], [f[inside] for f in frac]
        return pack(*ijk), pack(*frac), inside

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
        colours = pack(cols[:, 0], cols[:, 1], cols[:, 2])
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
        boundary[::MAX_RUN] = True  # keeps the packed run sums inside their bit fields
        starts = np.flatnonzero(boundary)
        run_count = np.diff(np.append(starts, len(keys))).astype(np.float64)
        run_offset = unpack(np.add.reduceat(offsets, starts))
        run_rgb = unpack(np.add.reduceat(colours, starts))
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
        return ((keys.view(np.uint64) * HASH_MUL) >> np.uint64(64 - self._tbits)).view(np.int64)

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
            empty = np.flatnonzero(there == EMPTY)
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
        self._tkeys[self._tpos[drop]] = GONE
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
        flooring of each offset to 1/FRAC voxel)."""
        n = self._n
        corner = np.stack(unpack(self._keys[:n]), axis=1).astype(np.float64) - OFFSET
        return (corner + (self._sum_offset[:n] / self._count[:n, None] + 0.5) / FRAC) * self.voxel_size

    def _mean_colors(self) -> np.ndarray:
        n = self._n
        return np.rint(self._sum_rgb[:n] / self._count[:n, None]).astype(np.uint8)
