"""Triton kernels that fuse one depth frame into TorchVoxelMap's hash in two launches.

The torch path spends ~100 small kernels and a host sync per probe round on a frame. Here:

1. ``_insert_kernel``, one program per block of pixels: unproject each valid pixel exactly as
   VoxelMap._frame_points/_voxel_keys do (same operation order, float32 near the origin,
   float64 far from it; no FMA contraction) and pack its voxel key. Neighbouring pixels mostly
   share a voxel, so only the first pixel of each run of equal keys finds or claims the key's
   entry in the open-addressing table (compare-and-swap linear probing); the run takes its
   position. A lane that claims an empty entry gets a dense slot from a device counter (one
   atomic per program and round) and writes the slot's key, table position and the entry's
   slot. Each pixel's table position is written out.
2. ``_accumulate_kernel``, after 1 so that every claimed entry has its slot: sums the count,
   the fixed-point offsets inside the voxel and the colours over each run, and adds them to
   the voxel's sums with one set of atomics per run. The sums are integers held in float64, so
   they are exact and do not depend on the order of the atomics.

Host and device exchange one small int64 ``params`` array per frame: [voxel count, valid pixel
count, bit patterns of the 9 + 3 scaled pose entries and of max_depth, the tick]; the kernels
update the two counters and the host reads them back once. Since everything that changes from
frame to frame is in that array, TorchVoxelMap can capture a frame's launches as CUDA graphs.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from .voxel_keys import BITS, EMPTY, FIELD, FRAC, HASH_MUL_SIGNED, OFFSET

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without triton: TorchVoxelMap keeps its torch path
    triton = None

HAVE_TRITON = triton is not None

NEVER = -3  # compare value of inactive lanes' CAS: no table entry ever holds it (keys >= 0)

BLOCK = 1024  # pixels per program on the GPU (both kernels 0.23 ms per frame on an H100; 512, 2048: 0.26)
NUM_WARPS = 4
INTERPRETER_BLOCK = 8192  # the interpreter pays per operation and program, not per pixel
PARAMS = 16  # int64 words: n, valid, R (9), t (3), max_depth, tick


def available(device) -> bool:
    """Whether the kernels run for tensors on `device`: natively on CUDA, on the CPU only in
    Triton's interpreter (TRITON_INTERPRET=1, which the tests use where no GPU exists)."""
    if not HAVE_TRITON:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def frame_params(n: int, pose: np.ndarray, scale: float, max_depth: float | None, tick: int = 0) -> np.ndarray:
    """The int64 `params` words for one frame: the counters, then float64 bit patterns of the
    pose scaled to voxel units (computed in numpy's float64, as _frame_points does) and of
    max_depth (0 when there is none), then the integration tick. Everything that changes from
    frame to frame is here, on the device, so a captured CUDA graph serves every frame."""
    floats = np.zeros(PARAMS - 2, np.float64)
    floats[:9] = (pose[:3, :3] * scale).reshape(-1)
    floats[9:12] = pose[:3, 3] * scale
    floats[12] = 0.0 if max_depth is None else max_depth
    params = np.zeros(PARAMS, np.int64)
    params[0] = n
    params[2:] = floats.view(np.int64)
    params[PARAMS - 1] = tick
    return params


class FrameSetup(NamedTuple):
    """How one frame is launched: every `stride`-th depth pixel; ray x/z per grid column (u)
    and y/z per grid row (v), float64 when `far` else float32; whether max_depth applies; and
    the int32 buffer (one per grid pixel) that carries table positions from insert to
    accumulate."""
    stride: int
    far: bool
    has_max_depth: bool
    u: object
    v: object
    positions: object

    @property
    def pixels(self) -> int:
        return len(self.u) * len(self.v)


def _launch_options(setup: FrameSetup, device) -> tuple[tuple, dict]:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    block = INTERPRETER_BLOCK if interpreted else BLOCK
    options = dict(HAS_MAX=setup.has_max_depth, FAR=setup.far, BLOCK=block, num_warps=NUM_WARPS)
    if device.type == "cuda" and not interpreted:  # bit-exact with numpy: no a*b+c in one rounding
        options["enable_fp_fusion"] = False
    return (triton.cdiv(setup.pixels, block),), options


def insert(depth, params, setup: FrameSetup, table_keys, table_slots, keys, tpos, table_bits: int) -> None:
    """Queue kernel 1: find or claim the table entry of every valid grid pixel's voxel (new
    voxels get their dense row: keys, tpos and the entry's table_slots). depth is the whole
    (H,W) float32 image; the table (2**table_bits entries) and the dense arrays must have room
    for every grid pixel as a new voxel."""
    if setup.pixels == 0:
        return
    grid, options = _launch_options(setup, depth.device)
    _insert_kernel[grid](depth, params, setup.u, setup.v, table_keys, table_slots, keys, tpos, setup.positions,
                         setup.pixels, len(setup.u), depth.shape[1], setup.stride, 64 - table_bits,
                         (1 << table_bits) - 1, **options)


def accumulate(depth, rgb, params, setup: FrameSetup, table_slots, count, sum_offset, sum_rgb, seen) -> None:
    """Queue kernel 2 (after insert): add every valid grid pixel's count, fixed-point offsets
    and nearest colour pixel of rgb (Hc,Wc,3) uint8 to its voxel's sums; mark it seen at the
    frame's tick."""
    if setup.pixels == 0:
        return
    grid, options = _launch_options(setup, depth.device)
    h, w = depth.shape
    _accumulate_kernel[grid](depth, rgb, params, setup.u, setup.v, table_slots, setup.positions, count, sum_offset,
                             sum_rgb, seen, setup.pixels, len(setup.u), w, h, setup.stride, rgb.shape[0],
                             rgb.shape[1], **options)


if HAVE_TRITON:
    # The per-frame int64 array is `words` inside the kernels: Triton 3.6's launcher builds a
    # local dict named `params` and then reads a kernel argument of that name as that dict.
    # jit code may only read globals that are constexpr
    _K_EMPTY, _K_NEVER, _K_BITS = tl.constexpr(EMPTY), tl.constexpr(NEVER), tl.constexpr(BITS)
    _K_OFFSET, _K_FIELD, _K_FRAC = tl.constexpr(OFFSET), tl.constexpr(FIELD), tl.constexpr(FRAC)
    _K_HASH_MUL = tl.constexpr(HASH_MUL_SIGNED)
    _K_TICK = tl.constexpr(PARAMS - 1)

    @triton.jit
    def _param(words, i, FAR: tl.constexpr):
        value = tl.load(words + 2 + i).to(tl.float64, bitcast=True)
        if not FAR:
            value = value.to(tl.float32)
        return value

    @triton.jit
    def _axis(u, v, z, words, i, FAR: tl.constexpr):
        """World coordinate `i` in voxel units, in _frame_points' order of roundings."""
        c = u * _param(words, 3 * i, FAR)
        c = c + v * _param(words, 3 * i + 1, FAR)
        c = c + _param(words, 3 * i + 2, FAR)
        c = c * z
        return c + _param(words, 9 + i, FAR)

    @triton.jit
    def _cell(c, ok):
        """(voxel index + OFFSET as int64, fixed-point offset inside the voxel, inside the key
        range) of coordinate c; lanes that are not ok are zeroed first (no NaN casts)."""
        c = tl.where(ok, c, 0.0)
        cell = tl.floor(c)
        inside = (cell >= -_K_OFFSET) & (cell <= _K_FIELD - _K_OFFSET)
        c = tl.where(inside, c, 0.0)
        cell = tl.where(inside, cell, 0.0)
        frac = tl.minimum(((c - cell) * _K_FRAC).to(tl.int64), _K_FRAC - 1)
        return cell.to(tl.int64) + _K_OFFSET, frac, inside

    @triton.jit
    def _pixel_voxels(depth, words, u_table, v_table, offs, n_pix, grid_w, depth_w, stride,
                      HAS_MAX: tl.constexpr, FAR: tl.constexpr):
        """For grid pixels `offs`: (valid depth, valid and inside the key range, packed voxel
        key, fixed-point offsets x, y, z, grid row, grid column)."""
        live = offs < n_pix
        row = offs // grid_w
        col = offs - row * grid_w
        z = tl.load(depth + row * stride * depth_w + col * stride, mask=live, other=0.0)
        valid = live & (z > 0)  # NaN compares False
        if HAS_MAX:  # compared in float32, as numpy and torch compare float32 depth with a scalar
            valid = valid & (z <= tl.load(words + 14).to(tl.float64, bitcast=True).to(tl.float32))
        if FAR:
            z = z.to(tl.float64)
        u = tl.load(u_table + col, mask=live, other=0.0)
        v = tl.load(v_table + row, mask=live, other=0.0)
        i, fx, in_x = _cell(_axis(u, v, z, words, 0, FAR), valid)
        j, fy, in_y = _cell(_axis(u, v, z, words, 1, FAR), valid)
        k, fz, in_z = _cell(_axis(u, v, z, words, 2, FAR), valid)
        ok = valid & in_x & in_y & in_z
        key = (i << 2 * _K_BITS) | (j << _K_BITS) | k
        return valid, ok, key, fx, fy, fz, row, col

    @triton.jit
    def _runs(same_as_before, BLOCK: tl.constexpr):
        """Neighbouring pixels mostly fall in one voxel. For runs of lanes marked the same as
        the lane before: each lane's run leader (first lane) and whether it ends its run."""
        lane = tl.arange(0, BLOCK)
        # running maximum of the leaders' lanes, in log2(BLOCK) doubling steps (an
        # associative_scan would do, but Triton's interpreter runs those lane by lane)
        leader = tl.where(same_as_before, 0, lane)
        for i in tl.static_range(16):  # unrolled; steps 1, 2, 4, ... below BLOCK
            if (1 << i) < BLOCK:
                back = tl.gather(leader, tl.maximum(lane - (1 << i), 0), 0)
                leader = tl.maximum(leader, tl.where(lane >= (1 << i), back, 0))
        after = tl.gather(same_as_before.to(tl.int32), tl.minimum(lane + 1, BLOCK - 1), 0)
        last = (after == 0) | (lane == BLOCK - 1)
        return leader, last

    @triton.jit
    def _run_sum(values, leader):
        """Per lane, the sum of `values` from its run's leader up to it (the run's total at its
        last lane): a cumulative sum minus the one before the leader."""
        total = tl.cumsum(values, 0)
        return total - tl.gather(total - values, leader, 0)

    # Arguments that change as the table grows are not specialised: Triton would compile a new
    # variant the first time one is 1 or a multiple of 16 (a stall of a second, mid-run).
    @triton.jit(do_not_specialize=["shift", "mask"])
    def _insert_kernel(depth, words, u_table, v_table, table_keys, table_slots, keys, tpos, pos_buffer,
                       n_pix, grid_w, depth_w, stride, shift, mask,
                       HAS_MAX: tl.constexpr, FAR: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid, ok, key, fx, fy, fz, row, col = _pixel_voxels(depth, words, u_table, v_table, offs, n_pix,
                                                             grid_w, depth_w, stride, HAS_MAX, FAR)
        tl.atomic_add(words + 1, tl.sum(valid.to(tl.int64), axis=0), sem="relaxed")
        # int64 multiply wraps like uint64; the arithmetic shift then the mask keep the top bits
        pos = ((key * _K_HASH_MUL) >> shift) & mask
        # only the first pixel of each run of one voxel probes; the run takes its position
        lane = tl.arange(0, BLOCK)
        before = tl.maximum(lane - 1, 0)
        ok_before = tl.gather(ok.to(tl.int32), before, 0) != 0
        same = ok & ok_before & (tl.gather(key, before, 0) == key) & (lane > 0)
        leader, _ = _runs(same, BLOCK)
        active = ok & ~same
        while tl.max(active.to(tl.int32), axis=0) > 0:
            # tl.atomic_cas has no mask: inactive lanes compare with a value no entry holds
            expect = tl.where(active, _K_EMPTY, _K_NEVER).to(tl.int64)
            prev = tl.atomic_cas(table_keys + pos, expect, key, sem="relaxed")
            claimed = active & (prev == _K_EMPTY)
            claims = tl.sum(claimed.to(tl.int64), axis=0)
            if claims > 0:  # one counter atomic per program and round hands out the new slots
                first = tl.atomic_add(words, claims, sem="relaxed")
                slot = first + tl.cumsum(claimed.to(tl.int64), axis=0) - claimed.to(tl.int64)
                tl.store(table_slots + pos, slot, mask=claimed)
                tl.store(keys + slot, key, mask=claimed)
                tl.store(tpos + slot, pos, mask=claimed)
            # another key or a tombstone (GONE): step on; never claim a tombstone
            active = active & (prev != _K_EMPTY) & (prev != key)
            pos = tl.where(active, (pos + 1) & mask, pos)
        pos = tl.gather(pos, leader, 0)
        tl.store(pos_buffer + offs, tl.where(ok, pos, -1).to(tl.int32), mask=offs < n_pix)

    @triton.jit
    def _accumulate_kernel(depth, rgb, words, u_table, v_table, table_slots, pos_buffer, count, sum_offset,
                           sum_rgb, seen, n_pix, grid_w, depth_w, depth_h, stride, rgb_h, rgb_w,
                           HAS_MAX: tl.constexpr, FAR: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid, ok, key, fx, fy, fz, row, col = _pixel_voxels(depth, words, u_table, v_table, offs, n_pix,
                                                             grid_w, depth_w, stride, HAS_MAX, FAR)
        pos = tl.load(pos_buffer + offs, mask=ok, other=-1).to(tl.int64)
        # sum each run of pixels in one voxel first: one set of atomics per run, at its last lane
        lane = tl.arange(0, BLOCK)
        same = ok & (tl.gather(pos, tl.maximum(lane - 1, 0), 0) == pos) & (lane > 0)
        leader, last = _runs(same, BLOCK)
        last = last & ok
        slot = tl.load(table_slots + pos, mask=last, other=0)
        # the nearest colour pixel (the same pixel when colour and depth have one size)
        crow = tl.minimum(row * stride * rgb_h // depth_h, rgb_h - 1)
        ccol = tl.minimum(col * stride * rgb_w // depth_w, rgb_w - 1)
        pix = (crow * rgb_w + ccol) * 3
        points = (lane - leader + 1).to(tl.float64)
        tl.atomic_add(count + slot, points, mask=last, sem="relaxed")
        tl.atomic_add(sum_offset + 3 * slot, _run_sum(tl.where(ok, fx, 0), leader).to(tl.float64), mask=last,
                      sem="relaxed")
        tl.atomic_add(sum_offset + 3 * slot + 1, _run_sum(tl.where(ok, fy, 0), leader).to(tl.float64), mask=last,
                      sem="relaxed")
        tl.atomic_add(sum_offset + 3 * slot + 2, _run_sum(tl.where(ok, fz, 0), leader).to(tl.float64), mask=last,
                      sem="relaxed")
        for ch in tl.static_range(3):
            colour = tl.load(rgb + pix + ch, mask=ok, other=0).to(tl.int32)
            tl.atomic_add(sum_rgb + 3 * slot + ch, _run_sum(colour, leader).to(tl.float64), mask=last, sem="relaxed")
        tick = tl.load(words + _K_TICK)
        tl.store(seen + slot, tl.zeros_like(slot) + tick, mask=last)
