"""Space-filling-curve serialization of voxel grids for Sonata's windowed attention.

Point Transformer V3 sorts the voxels of each stage along a curve and cuts the sorted sequence
into attention windows, so the curve decides which voxels see each other.  To load the released
weights the curves must match the ones the model was trained with, bit for bit:

- ``"z"``: Morton code, bit ``i`` of x/y/z goes to bit ``3i+2``/``3i+1``/``3i`` of the code.
- ``"hilbert"``: Skilling's transpose algorithm ("Programming the Hilbert curve", 2004) over
  ``depth`` bits per axis, axis x being the most significant within each level.
- ``"z-trans"`` / ``"hilbert-trans"``: the same curves with x and y swapped.

``depth`` is the number of bits of the largest coordinate + 1, recomputed for every stage; the
Hilbert curve's orientation depends on it, so it is part of the contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .configuration import SERIALIZATION_ORDERS as ORDERS
MAX_DEPTH = 16  # 48-bit codes, the upstream limit (655 m at 1 cm, 1.6 km at 2.5 cm)


def serialization_depth(grid_coord: Tensor) -> int:
    """Bits per axis needed for ``grid_coord`` (the upstream rule ``(max + 1).bit_length()``)."""
    if grid_coord.numel() == 0:
        return 1
    depth = int(grid_coord.max().item() + 1).bit_length()
    if depth > MAX_DEPTH:
        raise ValueError(
            f"voxel grid spans {int(grid_coord.max()) + 1} cells along an axis; serialization "
            f"supports at most 2**{MAX_DEPTH} (crop the scene or use a coarser grid)"
        )
    return depth


def _check_grid(grid_coord: Tensor, depth: int) -> Tensor:
    if grid_coord.ndim != 2 or grid_coord.shape[1] != 3:
        raise ValueError(f"grid_coord must have shape (N, 3), got {tuple(grid_coord.shape)}")
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in 1..{MAX_DEPTH}, got {depth}")
    grid = grid_coord.long()
    if grid.numel() and (grid.min() < 0 or grid.max() >= (1 << depth)):
        raise ValueError(f"grid coordinates must lie in [0, 2**{depth}) for depth {depth}")
    return grid


def _spread_bits(v: Tensor) -> Tensor:
    """Move bit i of a 16-bit value to bit 3i (the standard magic-number bit spread)."""
    v = v & 0xFFFF
    v = (v | (v << 16)) & 0x0000FF0000FF
    v = (v | (v << 8)) & 0x00F00F00F00F
    v = (v | (v << 4)) & 0x0C30C30C30C3
    v = (v | (v << 2)) & 0x249249249249
    return v


def z_order_encode(grid_coord: Tensor, depth: int = MAX_DEPTH) -> Tensor:
    """Morton codes (int64) of integer voxel coordinates ``(N, 3)`` in ``[0, 2**depth)``."""
    g = _check_grid(grid_coord, depth)
    return (_spread_bits(g[:, 0]) << 2) | (_spread_bits(g[:, 1]) << 1) | _spread_bits(g[:, 2])


def hilbert_encode(grid_coord: Tensor, depth: int = MAX_DEPTH) -> Tensor:
    """Hilbert codes (int64) of integer voxel coordinates ``(N, 3)`` in ``[0, 2**depth)``.

    Vectorised over points with integer bit operations: first Skilling's "inverse undo" pass
    from the most significant level down, then the transposed bits are interleaved (x highest)
    and Gray-decoded as one 3*depth-bit word, which is Skilling's Gray-encode step.
    """
    g = _check_grid(grid_coord, depth)
    x = [g[:, 0].clone(), g[:, 1].clone(), g[:, 2].clone()]
    for level in range(depth - 1, 0, -1):
        low = (1 << level) - 1
        for d in range(3):
            bit_set = ((x[d] >> level) & 1).bool()
            # bit set: invert the lower bits of axis 0; bit clear: swap lower bits of 0 and d
            x[0] = torch.where(bit_set, x[0] ^ low, x[0])
            swap = torch.where(bit_set, torch.zeros_like(x[0]), (x[0] ^ x[d]) & low)
            x[d] = x[d] ^ swap
            x[0] = x[0] ^ swap
    code = (_spread_bits(x[0]) << 2) | (_spread_bits(x[1]) << 1) | _spread_bits(x[2])
    for shift in (1, 2, 4, 8, 16, 32):  # prefix XOR from the top bit = Gray -> binary
        code = code ^ (code >> shift)
    return code


def encode(grid_coord: Tensor, order: str, depth: int) -> Tensor:
    """Code of every voxel along one of :data:`ORDERS`."""
    if order not in ORDERS:
        raise ValueError(f"unknown serialization order {order!r}; expected one of {ORDERS}")
    if order.endswith("-trans"):
        grid_coord = grid_coord[:, [1, 0, 2]]
    if order.startswith("z"):
        return z_order_encode(grid_coord, depth)
    return hilbert_encode(grid_coord, depth)


def _encode_many(grid_coord: Tensor, orders: tuple[str, ...], depth: int) -> Tensor:
    """``(len(orders), N)`` codes; curves of one family are encoded in one batched call,
    which matters on GPU where Hilbert encoding is ~50 small kernels per call."""
    for o in orders:
        if o not in ORDERS:
            raise ValueError(f"unknown serialization order {o!r}; expected one of {ORDERS}")
    n = grid_coord.shape[0]
    codes: dict[str, Tensor] = {}
    for family, fn in (("z", z_order_encode), ("hilbert", hilbert_encode)):
        wanted = [o for o in orders if o.split("-")[0] == family]
        if wanted:
            grids = [grid_coord[:, [1, 0, 2]] if o.endswith("-trans") else grid_coord for o in wanted]
            for o, c in zip(wanted, fn(torch.cat(grids), depth).split(n)):
                codes[o] = c
    return torch.stack([codes[o] for o in orders])


@dataclass
class Serialization:
    """The orders of one stage: ``order[i]`` sorts voxels along curve i, ``inverse[i]`` undoes it."""

    codes: Tensor  # (num_orders, N) int64
    order: Tensor  # (num_orders, N) int64, voxel index at each curve position
    inverse: Tensor  # (num_orders, N) int64, curve position of each voxel
    depth: int


def serialize(
    grid_coord: Tensor,
    orders: tuple[str, ...] | list[str],
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Serialization:
    """Sort the voxels of one stage along every curve in ``orders``.

    ``shuffle`` permutes which curve each block index gets (PTv3's ``shuffle_orders``), drawn
    from ``generator``; voxel codes are unique, so the sort itself is deterministic.
    """
    depth = serialization_depth(grid_coord)
    codes = _encode_many(grid_coord, tuple(orders), depth)
    order = torch.argsort(codes, dim=1)
    positions = torch.arange(codes.shape[1], device=codes.device).expand_as(order)
    inverse = torch.empty_like(order).scatter_(1, order, positions)
    if shuffle:
        draw_device = generator.device if generator is not None else "cpu"
        perm = torch.randperm(len(orders), generator=generator, device=draw_device).to(codes.device)
        codes, order, inverse = codes[perm], order[perm], inverse[perm]
    return Serialization(codes=codes, order=order, inverse=inverse, depth=depth)
