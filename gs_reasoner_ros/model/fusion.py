"""GS-Reasoner's dual-path pooling and token layout, as in the released implementation.

Each pooled 14x14 SigLIP token of a frame owns a 27x27-pixel "super patch" of the 378x378 crop.
Inside it 8x8 points are sampled and encoded by Sonata; two paths pool those 64 point features
into one per token: the position path (a Linear per point, then inverse-distance weights towards
the 3D point under the patch centre pixel) and the semantic path (cross-attention from the
pooled SigLIP feature). The fused feature, the projected SigLIP token and a sine encoding of the
patch centre in metres are summed; one newline embedding closes every row of 14 tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_pool(features: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """(F, n*n, C) tokens of a square grid -> (F, ceil(n/stride)^2, C) by bilinear interpolation
    (align_corners=False), the authors' get_2dPool in "bilinear" mode."""
    frames, count, channels = features.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"bilinear_pool needs a square token grid, got {count} tokens")
    grid = features.view(frames, side, side, channels).permute(0, 3, 1, 2).contiguous()
    pooled_side = math.ceil(side / stride)
    grid = F.interpolate(grid, size=[pooled_side, pooled_side], mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(frames, pooled_side * pooled_side, channels)


def sample_offsets(cell: int, per_side: int) -> torch.Tensor:
    """Pixel offsets of the per_side x per_side samples inside a cell: round(linspace(0, cell-1))."""
    return torch.round(torch.linspace(0, cell - 1, steps=per_side)).to(torch.int64)


def _cells(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """(F, S, S, C) -> (F, grid, grid, cell, cell, C) over the top-left grid*cell pixels."""
    frames, height, width, channels = maps.shape
    cell = height // grid
    if height != width or cell == 0:
        raise ValueError(f"expected square (F,S,S,C) maps with S >= {grid}, got {tuple(maps.shape)}")
    used = maps[:, :grid * cell, :grid * cell]
    return used.reshape(frames, grid, cell, grid, cell, channels).permute(0, 1, 3, 2, 4, 5)


def sample_patch_points(maps: torch.Tensor, grid: int, n_points: int) -> torch.Tensor:
    """(F, S, S, C) -> (F, grid, grid, n_points, C): an n x n grid of samples per cell (row-major),
    cells of S // grid pixels (27 for 384/14; the last 6 rows and columns are unused)."""
    per_side = math.isqrt(n_points)
    cells = _cells(maps, grid)
    offsets = sample_offsets(cells.shape[3], per_side).to(maps.device)
    rows, cols = torch.meshgrid(offsets, offsets, indexing="ij")
    samples = cells[:, :, :, rows, cols, :]
    return samples.reshape(*samples.shape[:3], n_points, maps.shape[-1])


def patch_centers(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """(F, S, S, C) -> (F, grid, grid, C): the value at pixel offset (cell//2, cell//2) of every cell
    (13 for 27-pixel cells)."""
    cells = _cells(maps, grid)
    middle = cells.shape[3] // 2
    return cells[:, :, :, middle, middle, :]


class SinePositionEncoding3D(nn.Module):
    """Sine encoding of 3D points in metres (PositionEmbeddingSine3D, n_points=1): H//3 features per
    axis, feature i is sin(a / T^(2*floor(i/2)/(H//3))) for even i and cos(...) for odd i, axes
    concatenated x, y, z, zero-padded to H. Computed in float32, returned in the input's dtype."""

    def __init__(self, hidden_size: int, temperature: float = 10000.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.temperature = temperature

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        per_axis = self.hidden_size // 3
        index = torch.arange(per_axis, dtype=torch.float32, device=points.device)
        dim_t = self.temperature ** (2 * (index // 2) / per_axis)
        even = (torch.arange(per_axis, device=points.device) % 2) == 0
        parts = []
        for axis in range(3):
            phase = points[..., axis, None] / dim_t
            parts.append(torch.where(even, phase.sin(), phase.cos()))
        out = torch.zeros(*points.shape[:-1], self.hidden_size, dtype=points.dtype, device=points.device)
        out[..., :3 * per_axis] = torch.cat(parts, dim=-1)
        return out


class InverseDistancePooling(nn.Module):
    """The position-aligned path (`pointnet_pooling`): Linear(in->out) on every point feature, then
    the average weighted by 1/(d+1e-8), d = distance of each point to the patch centre point.

    Computed as Linear applied to the weighted average of the inputs (W(sum w f) + (sum w) b), which
    is the same function with 64x fewer multiply-adds and no (points x 2048) intermediate.
    `logit_scale` is an unused parameter of the release, kept so its checkpoints load unchanged."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.mlp = nn.Linear(in_features, out_features)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, point_features: torch.Tensor, points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """point_features (..., K, in), points (..., K, 3), centers (..., 3) -> (..., out)."""
        distances = torch.norm(points - centers.unsqueeze(-2), dim=-1)
        weights = 1.0 / (distances + 1e-8)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(point_features.dtype)
        pooled = torch.matmul(weights.unsqueeze(-2), point_features).squeeze(-2)
        return F.linear(pooled, self.mlp.weight) + weights.sum(dim=-1, keepdim=True) * self.mlp.bias


class SemanticCrossAttention(nn.Module):
    """The semantic-aligned path (`ada_crossattn`): one query per patch from its pooled SigLIP
    feature attends over the patch's point features; heads concatenated, no output projection.
    Attention dropout (0.1) applies in training mode only."""

    def __init__(self, query_features: int, point_features: int, num_heads: int = 8, dropout: float = 0.1):
        super().__init__()
        if point_features % num_heads:
            raise ValueError(f"point feature width {point_features} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = point_features // num_heads
        self.q_proj = nn.Linear(query_features, point_features, bias=False)
        self.k_proj = nn.Linear(point_features, point_features, bias=False)
        self.v_proj = nn.Linear(point_features, point_features, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, point_features: torch.Tensor) -> torch.Tensor:
        """query (..., Cq), point_features (..., K, C) -> (..., C).

        The key and value projections are folded into the query and the output (q.(Wk f) =
        (Wk^T q).f and sum a (Wv f) = Wv (sum a f), per head; both have no bias), the same function
        without projecting every point: 60x fewer multiply-adds at the release's sizes."""
        heads, head_dim = self.num_heads, self.head_dim
        width = point_features.shape[-1]
        q = self.q_proj(query).unflatten(-1, (heads, head_dim))  # (..., H, D)
        q_in = torch.einsum("...hd,hdc->...hc", q, self.k_proj.weight.view(heads, head_dim, width))
        scores = torch.matmul(q_in, point_features.transpose(-1, -2)) / math.sqrt(head_dim)  # (..., H, K)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        mixed = torch.matmul(weights, point_features)  # (..., H, C)
        out = torch.einsum("...hc,hdc->...hd", mixed, self.v_proj.weight.view(heads, head_dim, width))
        return out.flatten(-2)


def add_row_newlines(tokens: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """(F, g*g, H) per-frame token grids -> (F*g*(g+1), H): frames in order, rows top to bottom,
    the newline embedding after each row of g tokens (mm_newline_position="grid")."""
    frames, count, hidden = tokens.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"expected a square token grid per frame, got {count} tokens")
    rows = tokens.view(frames, side, side, hidden)
    ends = newline.to(tokens.dtype).view(1, 1, 1, hidden).expand(frames, side, 1, hidden)
    return torch.cat([rows, ends], dim=2).reshape(frames * side * (side + 1), hidden)
