"""Fused q/k/v and gate/up projections for the decode step.

In a decode step every projection is a matrix-vector product, and the small k and v products ran
far below memory bandwidth; fused, each group is one product per token instead of two or three.
The layers' own weights become views of the fused tensors, so no memory is added and the model
computes exactly as before. Layers that cannot share one tensor (LoRA-wrapped, trainable, mixed
dtypes or biases) are left unfused.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn


class FusedLayer(NamedTuple):
    """One layer's fused weights; the layer's own q/k/v and gate/up parameters are row views of them."""

    qkv_weight: Tensor
    qkv_bias: Tensor | None
    gate_up_weight: Tensor


def fuse_layer(layer) -> FusedLayer | None:
    """The fused projections of one decoder layer, or None when it cannot be fused."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = _fuse_linears((attn.q_proj, attn.k_proj, attn.v_proj))
    gate_up = _fuse_linears((mlp.gate_proj, mlp.up_proj))
    if qkv is None or gate_up is None or not hasattr(mlp, "act_fn"):
        return None
    return FusedLayer(*qkv, gate_up[0])


def _fuse_linears(linears: Sequence[nn.Module]) -> tuple[Tensor, Tensor | None] | None:
    """(weight, bias) holding the rows of ``linears`` back to back, each layer's parameters
    re-pointed to its rows so nothing is stored twice; None when the layers cannot share one
    tensor (not plain nn.Linear, e.g. LoRA-wrapped; trainable; mixed dtypes or biases)."""
    if not all(type(m) is nn.Linear for m in linears):
        return None
    weights = [m.weight for m in linears]
    biases = [m.bias for m in linears]
    if any(w.requires_grad for w in weights) or any(b is not None and b.requires_grad for b in biases):
        return None  # an optimizer may hold these very tensors
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1 or len({b is None for b in biases}) != 1:
        return None
    weight = _rows_of(linears, "weight")
    bias = None if biases[0] is None else _rows_of(linears, "bias")
    return weight, bias


def _rows_of(linears: Sequence[nn.Module], name: str) -> Tensor:
    """The parameters ``name`` of ``linears`` as one tensor: a view when they already lie back to
    back in one storage (a decoder made earlier fused them), else a new tensor they become views of."""
    parts = [getattr(m, name) for m in linears]
    first = parts[0]
    rows = sum(p.shape[0] for p in parts)
    size = (rows, *first.shape[1:])
    offset, adjacent = first.storage_offset(), all(p.is_contiguous() for p in parts)
    for p in parts:
        adjacent = adjacent and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() \
            and p.storage_offset() == offset
        offset += p.numel()
    if adjacent:  # contiguous rows back to back: the first part's strides fit the whole
        return first.detach().as_strided(size, first.stride(), first.storage_offset())
    with torch.no_grad():
        fused = torch.cat([p.detach() for p in parts])
    start = 0
    for m, p in zip(linears, parts):
        setattr(m, name, nn.Parameter(fused[start : start + p.shape[0]], requires_grad=False))
        start += p.shape[0]
    return fused
