"""Submanifold 3x3x3 sparse convolution (Sonata's conditional position encoding).

Every PTv3 block starts with ``spconv.SubMConv3d(C, C, 3, bias=True)``: output sites equal input
sites, and each site sums ``W[:, dx+1, dy+1, dz+1, :] @ feat[site + (dx, dy, dz)]`` over the
occupied neighbours (a correlation, like dense ``conv3d``).  The weight keeps spconv 2.x's layout
``[C_out, 3, 3, 3, C_in]`` so official checkpoints load unchanged.

Backends, picked per call from the device (or forced by ``backend=`` / the environment variable
``GS_REASONER_SPARSE_BACKEND`` = ``auto|torch|spconv|spconv_triton``):

- ``torch`` (always available, the only one used on CPU): a rulebook of (input, output) index
  pairs per kernel offset, found by ``searchsorted`` over sorted int64 voxel keys, then
  gather / matmul / scatter per offset ("pairs", CPU) or one gather of all 27 neighbours and a
  single matmul per chunk ("gemm", CUDA: few kernel launches).  Autograd gives the backward.
- ``spconv_triton`` then ``spconv`` on CUDA when importable.  They are imported lazily, never at
  module import time.  spconv's CPU kernels give wrong rows with more than one thread, so ``auto``
  never picks it on CPU.

The rulebook (and the spconv index tensors) are cached on the :class:`VoxelGrid` of a stage and
shared by all blocks of that stage, as spconv's ``indice_key`` does.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

BACKENDS = ("auto", "torch", "spconv", "spconv_triton")
BACKEND_ENV = "GS_REASONER_SPARSE_BACKEND"
# kernel offsets in spconv's weight order: index (dx+1)*9 + (dy+1)*3 + (dz+1)
KERNEL_OFFSETS = torch.tensor(
    [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)],
    dtype=torch.int64,
)
CENTER = 13


@dataclass
class Rulebook:
    """Neighbours of a submanifold 3x3x3 conv, in two forms: for offset k, ``in_idx[k]`` feeds
    ``out_idx[k]`` (each output at most once); ``table[v, k]`` is the neighbour of voxel ``v`` at
    offset k, or N (a zero row) when that cell is empty."""

    in_idx: list[Tensor]
    out_idx: list[Tensor]
    table: Tensor


@dataclass
class VoxelGrid:
    """The occupied voxels of one stage, ``(N, 3)`` non-negative integer coordinates, unique.

    Holds per-stage caches (rulebook, backend tensors) so that every block of a stage reuses them.
    """

    coord: Tensor
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.coord.ndim != 2 or self.coord.shape[1] != 3:
            raise ValueError(f"voxel coordinates must have shape (N, 3), got {tuple(self.coord.shape)}")
        if self.coord.dtype.is_floating_point:
            raise ValueError("voxel coordinates must be integers")
        self.coord = self.coord.long()
        if self.coord.numel() and self.coord.min() < 0:
            raise ValueError("voxel coordinates must be non-negative")

    def __len__(self) -> int:
        return self.coord.shape[0]

    def rulebook(self) -> Rulebook:
        """The neighbour pairs of this grid (computed once, then cached)."""
        if "rulebook" not in self.cache:
            self.cache["rulebook"] = build_rulebook(self.coord)
        return self.cache["rulebook"]


def build_rulebook(coord: Tensor) -> Rulebook:
    """Pairs (input voxel, output voxel) for each of the 27 offsets, by sorted-key lookup.

    Coordinates are shifted by +1 and packed with a base larger than the extent + 2, so a
    neighbour key can never alias another voxel.  Assumes unique coordinates.
    """
    n = coord.shape[0]
    device = coord.device
    if n == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return Rulebook([empty] * 27, [empty] * 27, empty.reshape(0, 27))
    base = int(coord.max().item()) + 3
    if 3 * math.log2(base) > 62:
        raise ValueError(f"voxel grid extent {base - 3} is too large to index with int64 keys")
    c = coord + 1
    keys = (c[:, 0] * base + c[:, 1]) * base + c[:, 2]
    sorted_keys, sort_idx = torch.sort(keys)
    offsets = KERNEL_OFFSETS.to(device)
    delta = (offsets[:, 0] * base + offsets[:, 1]) * base + offsets[:, 2]  # (27,)
    query = keys[None, :] + delta[:, None]  # (27, N): neighbour at site + offset
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=n - 1)
    hit = sorted_keys[pos] == query
    neighbour = sort_idx[pos]
    arange = torch.arange(n, device=device)
    in_idx, out_idx = [], []
    for k in range(27):
        if k == CENTER:
            in_idx.append(arange)
            out_idx.append(arange)
            continue
        h = hit[k]
        in_idx.append(neighbour[k][h])
        out_idx.append(arange[h])
    table = torch.where(hit, neighbour, n).t().contiguous()
    return Rulebook(in_idx, out_idx, table)


def submanifold_conv3d_torch(
    feat: Tensor, rulebook: Rulebook, weight: Tensor, bias: Tensor | None, method: str | None = None
) -> Tensor:
    """Pure-torch submanifold conv: ``weight`` ``[C_out, 3, 3, 3, C_in]``, ``feat`` ``[N, C_in]``.

    ``method="pairs"`` (CPU default) multiplies only the occupied neighbour pairs, one
    gather/matmul/scatter per offset.  ``method="gemm"`` (CUDA default) gathers all 27
    neighbours (zeros for empty cells) and does one matmul per chunk of voxels: more FLOPs, but
    a handful of kernel launches instead of ~80 per conv.
    """
    method = method or ("gemm" if feat.device.type == "cuda" else "pairs")
    if method == "gemm":
        return _conv_gemm(feat, rulebook.table, weight, bias)
    if method != "pairs":
        raise ValueError(f"unknown sparse-conv method {method!r}; expected 'pairs' or 'gemm'")
    c_out, c_in = weight.shape[0], weight.shape[-1]
    w = weight.reshape(c_out, 27, c_in)
    out = feat @ w[:, CENTER, :].t()  # every site is its own centre neighbour
    if bias is not None:
        out = out + bias
    for k in range(27):
        if k == CENTER or rulebook.in_idx[k].numel() == 0:
            continue
        # outputs are unique per offset, so a plain (non-accumulating) index_put is exact
        out[rulebook.out_idx[k]] += feat[rulebook.in_idx[k]] @ w[:, k, :].t()
    return out


GEMM_CHUNK_ELEMENTS = 2**26  # gathered floats per matmul (256 MB in fp32)


def _conv_gemm(feat: Tensor, table: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    n, c_in = feat.shape
    c_out = weight.shape[0]
    padded = torch.cat([feat, feat.new_zeros(1, c_in)])
    w = weight.reshape(c_out, 27 * c_in).t()
    chunk = max(1, GEMM_CHUNK_ELEMENTS // (27 * c_in))
    outs = []
    for start in range(0, n, chunk):
        gathered = padded[table[start:start + chunk]].reshape(-1, 27 * c_in)
        outs.append(gathered @ w if bias is None else torch.addmm(bias, gathered, w))
    if not outs:
        return feat.new_zeros(0, c_out)
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _import_backend(name: str):
    """Import a spconv flavour lazily; returns its ``pytorch`` module or None."""
    try:
        if name == "spconv_triton":
            import spconv_triton.pytorch as mod  # type: ignore[import-not-found]
        else:
            import spconv.pytorch as mod  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure (no CUDA libs, no triton) means absent
        return None
    return mod


_AVAILABLE: dict[str, Any] = {}


def available_backend(name: str):
    """The imported module of a spconv flavour, or None when it cannot be imported (cached)."""
    if name not in _AVAILABLE:
        _AVAILABLE[name] = _import_backend(name)
    return _AVAILABLE[name]


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """Concrete backend for ``device``: an explicit choice, the environment variable, or auto."""
    choice = backend or os.environ.get(BACKEND_ENV, "auto")
    if choice not in BACKENDS:
        raise ValueError(f"unknown sparse-conv backend {choice!r}; expected one of {BACKENDS}")
    if choice != "auto":
        if choice != "torch" and available_backend(choice) is None:
            raise ValueError(f"sparse-conv backend {choice!r} was requested but cannot be imported")
        return choice
    if device.type == "cuda":
        for name in ("spconv_triton", "spconv"):
            if available_backend(name) is not None:
                return name
    return "torch"


class SubMConv3d(nn.Module):
    """Submanifold sparse conv with spconv's parameter layout (``weight`` [C_out,k,k,k,C_in], ``bias``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        if kernel_size != 3:
            raise ValueError("only 3x3x3 submanifold convolutions are implemented (Sonata's CPE)")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.trunc_normal_(self.weight, std=0.02)
        self._spconv: dict[str, nn.Module] = {}  # backend modules, kept outside the state dict

    def forward(self, feat: Tensor, grid: VoxelGrid, backend: str | None = None) -> Tensor:
        """Convolve ``feat`` ``[N, C_in]`` living on ``grid`` (N voxels); returns ``[N, C_out]``."""
        if feat.ndim != 2 or feat.shape[1] != self.in_channels or feat.shape[0] != len(grid):
            raise ValueError(
                f"expected features of shape ({len(grid)}, {self.in_channels}), got {tuple(feat.shape)}"
            )
        name = resolve_backend(feat.device, backend)
        if name == "torch":
            return submanifold_conv3d_torch(feat, grid.rulebook(), self.weight, self.bias)
        return self._forward_spconv(name, feat, grid)

    def _forward_spconv(self, name: str, feat: Tensor, grid: VoxelGrid) -> Tensor:
        mod = available_backend(name)
        conv = self._spconv.get(name)
        if conv is None:
            conv = mod.SubMConv3d(self.in_channels, self.out_channels, 3, bias=self.bias is not None,
                                  indice_key="stage")
            self._spconv[name] = conv
        # share our parameters so .to(), loading and training act on one set of tensors
        conv.weight = self.weight
        conv.bias = self.bias
        key = f"{name}_tensor"
        if key not in grid.cache:
            indices = torch.cat([torch.zeros_like(grid.coord[:, :1]), grid.coord], 1).int().contiguous()
            shape = (grid.coord.max(0).values + 2).tolist() if len(grid) else [1, 1, 1]
            grid.cache[key] = mod.SparseConvTensor(feat, indices, shape, 1)
        out = conv(grid.cache[key].replace_feature(feat))
        grid.cache[key] = out  # carries spconv's cached index pairs for the next block
        return out.features
