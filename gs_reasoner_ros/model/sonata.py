"""Sonata / Point Transformer V3 encoder of GS-Reasoner ("sonata-wo-normal", encoder only).

``Sonata(config)(coord, color)`` turns a point cloud into one 1232-d feature per point:

1. Preprocessing, as the authors' ``nonorml_transform``: shift the cloud so every axis starts
   at 0 (``PositiveShift``), voxelise it at ``grid_size`` (2.5 cm) keeping one point per voxel
   (``GridSample``), and use ``[shifted xyz (m), rgb]`` as the 6-d input feature.  **Colour must
   already be in [0, 1]**: the authors divide 0..255 colours by 255 before this step, the caller
   does that here.  The voxel index is ``floor(shifted / grid_size)`` in float32, like the
   authors' pinned NumPy 1.26.
2. Encoder: Linear+LayerNorm+GELU embedding, then 5 stages of pre-norm PTv3 blocks
   (``x += cpe(x); x += attn(norm1(x)); x += mlp(norm2(x))``) with stride-2 grid pooling in
   between.  Attention runs inside windows of ``enc_patch_size`` voxels consecutive along a
   space-filling curve; block ``i`` of a stage uses curve ``i % 4``.
3. Multi-scale "upcast": every stage's features are copied back down the pooling hierarchy and
   concatenated (48+96+192+384+512 = 1232 per voxel), then given to every input point of a voxel.

Two modes:

- ``deterministic=True`` (default, what the node uses): each voxel is represented by its first
  point in input order, and the curves are not shuffled (block ``i`` always uses
  ``order[i % 4]``).  The output is a pure function of the input.
- ``deterministic=False`` ("faithful-random", what the authors run even at inference): a random
  point per voxel and, at every stage, a random permutation of the four curves, all drawn from
  ``generator`` (any ``torch.Generator``; the global CPU RNG when None), so a seeded run repeats.

Sonata always runs in float32 with autocast off (the authors call ``.float()`` on it in their
forward; this module does the same), except that attention on CUDA computes in fp16 inside the
kernel, as the authors' flash-attention path does.  Sparse-conv and attention backends are chosen
at run time; see :mod:`.sparse_conv` and :mod:`.attention`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import window_attention, window_partition
from .configuration import SonataConfig
from .serialization import Serialization, serialize
from .sparse_conv import SubMConv3d, VoxelGrid

# ---------------------------------------------------------------------------------------------
# Voxel bookkeeping (no parameters)


@dataclass
class GridSampleResult:
    """One kept point per occupied voxel: ``index[v]`` is the input point of voxel ``v``,
    ``inverse[p]`` the voxel of input point ``p``, ``grid_coord[v]`` its integer coordinates."""

    index: Tensor
    inverse: Tensor
    grid_coord: Tensor


def _pack(coord: Tensor) -> tuple[Tensor, int]:
    """Lexicographically ordered int64 key of non-negative integer (x, y, z)."""
    base = int(coord.max().item()) + 1 if coord.numel() else 1
    if base ** 3 >= 2**62:
        raise ValueError(f"voxel grid extent {base} is too large to index (crop the scene)")
    return (coord[:, 0] * base + coord[:, 1]) * base + coord[:, 2], base


def grid_sample(
    coord: Tensor,
    grid_size: float,
    *,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
) -> GridSampleResult:
    """Voxelise ``coord`` (N, 3) and keep one point per voxel (the authors' ``GridSample``).

    Deterministic: the first point (in input order) of every voxel.  Otherwise a uniformly
    random point per voxel, drawn from ``generator``.  Voxels are listed in lexicographic order
    of their coordinates; the encoder does not depend on that order.
    """
    # a 0-d tensor on the device, not a Python scalar: CUDA turns division by a CPU scalar into
    # multiplication by its reciprocal, which moves points that sit on voxel borders
    size = torch.tensor(grid_size, dtype=torch.float32, device=coord.device)
    grid = torch.floor(coord.float() / size).long()
    grid = grid - grid.min(0).values
    key, _ = _pack(grid)
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    num = counts.numel()
    points = torch.arange(coord.shape[0], device=coord.device)
    if deterministic:
        index = torch.full((num,), coord.shape[0], device=coord.device, dtype=torch.long)
        index = index.scatter_reduce(0, inverse, points, "amin")
    else:
        by_voxel = torch.argsort(inverse, stable=True)
        start = torch.cumsum(counts, 0) - counts
        draw_device = generator.device if generator is not None else "cpu"
        pick = (torch.rand(num, generator=generator, device=draw_device).to(coord.device) * counts).long()
        index = by_voxel[start + torch.minimum(pick, counts - 1)]
    return GridSampleResult(index=index, inverse=inverse, grid_coord=grid[index])


def grid_pool(grid_coord: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Coarse voxels ``grid_coord // stride`` (lexicographically sorted, unique) and the coarse
    voxel of every fine voxel (PTv3's ``GridPooling`` clustering)."""
    coarse = torch.div(grid_coord, stride, rounding_mode="floor")
    key, base = _pack(coarse)
    unique_key, cluster = torch.unique(key, return_inverse=True)
    coords = torch.stack([unique_key // (base * base), (unique_key // base) % base, unique_key % base], 1)
    return coords, cluster


class StageContext:
    """What every block of one stage shares: the voxel grid (conv rulebook) and the curves."""

    def __init__(self, grid: VoxelGrid, serialization: Serialization):
        self.grid = grid
        self.serialization = serialization
        self._plans: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor, int]] = {}

    def attention_plan(self, order_index: int, patch_size: int) -> tuple[Tensor, Tensor, Tensor, int]:
        """``(gather, inverse, cu_seqlens, max_seqlen)``: token ``t`` of the padded windows is
        voxel ``gather[t]``; voxel ``v``'s output is padded row ``inverse[v]``."""
        key = (order_index, patch_size)
        if key not in self._plans:
            order = self.serialization.order[order_index]
            pad_index, cu = window_partition(order.numel(), patch_size, order.device)
            max_len = min(patch_size, order.numel())
            self._plans[key] = (order[pad_index], self.serialization.inverse[order_index], cu, max_len)
        return self._plans[key]


# ---------------------------------------------------------------------------------------------
# Modules (attribute names give the official state-dict keys)


class Embedding(nn.Module):
    """``stem.linear`` + ``stem.norm`` + GELU: 6 input channels to the first stage width."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.stem = nn.Sequential()
        self.stem.add_module("linear", nn.Linear(in_channels, channels))
        self.stem.add_module("norm", nn.LayerNorm(channels))
        self.stem.add_module("act", nn.GELU())

    def forward(self, feat: Tensor) -> Tensor:
        return self.stem(feat)


class SerializedAttention(nn.Module):
    """Multi-head self-attention inside windows of consecutive voxels along one curve."""

    def __init__(self, channels: int, num_heads: int, patch_size: int, qkv_bias: bool, order_index: int):
        super().__init__()
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.order_index = order_index
        self.qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, feat: Tensor, ctx: StageContext) -> Tensor:
        n, channels = feat.shape
        gather, inverse, cu, max_len = ctx.attention_plan(self.order_index, self.patch_size)
        qkv = self.qkv(feat)[gather].reshape(-1, 3, self.num_heads, channels // self.num_heads)
        out = window_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, max_len)
        return self.proj(out[:n].reshape(n, channels)[inverse])


class MLP(nn.Module):
    """``fc1`` (C -> ratio*C), GELU, ``fc2`` (back to C)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm PTv3 block: sparse-conv position encoding, windowed attention, MLP."""

    def __init__(self, channels: int, num_heads: int, patch_size: int, mlp_ratio: float,
                 qkv_bias: bool, order_index: int):
        super().__init__()
        # ModuleList (not Sequential) because the conv needs the stage's voxel grid
        self.cpe = nn.ModuleList([SubMConv3d(channels, channels, 3, bias=True),
                                  nn.Linear(channels, channels), nn.LayerNorm(channels)])
        self.norm1 = nn.Sequential(nn.LayerNorm(channels))
        self.attn = SerializedAttention(channels, num_heads, patch_size, qkv_bias, order_index)
        self.norm2 = nn.Sequential(nn.LayerNorm(channels))
        self.mlp = nn.Sequential(MLP(channels, int(channels * mlp_ratio)))

    def forward(self, feat: Tensor, ctx: StageContext) -> Tensor:
        conv, linear, norm = self.cpe
        feat = feat + norm(linear(conv(feat, ctx.grid)))
        feat = feat + self.attn(self.norm1(feat), ctx)
        return feat + self.mlp(self.norm2(feat))


class GridPooling(nn.Module):
    """``proj`` to the next width, max over each coarse voxel, then LayerNorm (``norm.0``) + GELU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.Sequential(nn.LayerNorm(out_channels))
        self.act = nn.Sequential(nn.GELU())

    def forward(self, feat: Tensor, cluster: Tensor, num_clusters: int) -> Tensor:
        x = self.proj(feat)
        index = cluster[:, None].expand_as(x)
        pooled = x.new_zeros(num_clusters, x.shape[1]).scatter_reduce(0, index, x, "amax", include_self=False)
        return self.act(self.norm(pooled))


class Stage(nn.Module):
    """Optional ``down`` pooling followed by ``block0..blockN``."""

    def __init__(self, config: SonataConfig, s: int):
        super().__init__()
        channels = config.enc_channels[s]
        if s > 0:
            self.down = GridPooling(config.enc_channels[s - 1], channels)
        for i in range(config.enc_depths[s]):
            self.add_module(f"block{i}", Block(channels, config.enc_num_head[s], config.enc_patch_size[s],
                                               config.mlp_ratio, config.qkv_bias, i % len(config.order)))

    def blocks(self) -> list[Block]:
        return [m for name, m in self.named_children() if name.startswith("block")]


class Sonata(nn.Module):
    """GS-Reasoner's PTv3 encoder with multi-scale upcast; see the module docstring."""

    def __init__(self, config: SonataConfig | None = None):
        super().__init__()
        self.config = config or SonataConfig()
        cfg = self.config
        self.embedding = Embedding(cfg.in_channels, cfg.enc_channels[0])
        self.enc = nn.Module()
        for s in range(len(cfg.enc_depths)):
            self.enc.add_module(f"enc{s}", Stage(cfg, s))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # the authors' init: truncated normal (std 0.02) for linear and conv weights, zero biases
        if isinstance(module, (nn.Linear, SubMConv3d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    def forward(
        self,
        coord: Tensor,
        color: Tensor,
        *,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-point features ``(N, out_channels)`` for world coordinates (metres) and colours in [0, 1]."""
        coord, color = self._check_inputs(coord, color)
        if self.embedding.stem.linear.weight.dtype != torch.float32:
            self.float()  # the authors keep Sonata in fp32 even inside a bf16 model
        with torch.autocast(device_type=coord.device.type, enabled=False):
            shifted = coord - coord.min(0).values
            sample = grid_sample(shifted, self.config.grid_size, deterministic=deterministic, generator=generator)
            feat = torch.cat([shifted[sample.index], color[sample.index]], 1)
            voxel_feat = self.encode(feat, sample.grid_coord, shuffle=not deterministic, generator=generator)
            return voxel_feat[sample.inverse]

    def encode(
        self,
        feat: Tensor,
        grid_coord: Tensor,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Encoder + upcast on already voxelised input: ``feat`` (M, 6) of M unique voxels at
        non-negative integer ``grid_coord`` (M, 3); returns (M, out_channels)."""
        cfg = self.config
        if feat.ndim != 2 or feat.shape[1] != cfg.in_channels or grid_coord.shape != (feat.shape[0], 3):
            raise ValueError(f"expected feat (M, {cfg.in_channels}) and grid_coord (M, 3), got "
                             f"{tuple(feat.shape)} and {tuple(grid_coord.shape)}")
        shuffle = shuffle and cfg.shuffle_orders
        grid_coord = grid_coord.long()
        feat = self.embedding(feat.float())
        stage_feats, clusters = [], []
        for s, stage in enumerate(self.enc.children()):
            if s > 0:
                grid_coord, cluster = grid_pool(grid_coord, cfg.stride[s - 1])
                feat = stage.down(feat, cluster, grid_coord.shape[0])
                clusters.append(cluster)
            ctx = StageContext(VoxelGrid(grid_coord),
                               serialize(grid_coord, cfg.order, shuffle=shuffle, generator=generator))
            for block in stage.blocks():
                feat = block(feat, ctx)
            stage_feats.append(feat)
        return upcast(stage_feats, clusters)

    def _check_inputs(self, coord: Tensor, color: Tensor) -> tuple[Tensor, Tensor]:
        if coord.ndim != 2 or coord.shape[1] != 3:
            raise ValueError(f"coord must have shape (N, 3), got {tuple(coord.shape)}")
        if color.shape != coord.shape:
            raise ValueError(f"color must have the shape of coord {tuple(coord.shape)}, got {tuple(color.shape)}")
        if coord.shape[0] == 0:
            raise ValueError("Sonata needs at least one point")
        coord, color = coord.float(), color.float()
        if not torch.isfinite(coord).all():
            raise ValueError("coord contains NaN or infinite values")
        return coord, color


def upcast(stage_feats: list[Tensor], clusters: list[Tensor]) -> Tensor:
    """Concatenate every coarser stage's features onto the finest voxels: ``clusters[s]`` maps the
    voxels of stage ``s`` to those of stage ``s + 1``; result order is finest width first."""
    if len(clusters) != len(stage_feats) - 1:
        raise ValueError("need one cluster map per pooling")
    feat = stage_feats[-1]
    for finer, cluster in zip(reversed(stage_feats[:-1]), reversed(clusters)):
        feat = torch.cat([finer, feat[cluster]], 1)
    return feat
