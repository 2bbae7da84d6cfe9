"""The static KV cache of :class:`~gs_reasoner_ros.model.generation.GreedyDecoder`.

Keys and values of every layer are preallocated for the whole cache length and written in place,
so the decode step's tensors never change address (what a CUDA graph needs) and no token grows a
tensor. Costs ``layers * 2 * kv_heads * head_dim * dtype bytes`` per position (56 KiB for
Qwen2-7B in bf16).
"""
from __future__ import annotations

import torch
from torch import Tensor

CACHE_ALIGN = 64  # cache length multiple: keeps attention rows aligned for the GPU kernels


def round_up(n: int, multiple: int = CACHE_ALIGN) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-n // multiple) * multiple


class StaticKVCache:
    """Per-layer key and value buffers of shape (1, kv_heads, length + spare, head_dim).

    ``length`` is rounded up to a multiple of 64. One spare block of slots is never written: an
    attention slice of any length <= ``length`` is then never the whole buffer, so a compile with
    the length dynamic has no contiguity case to specialise on.
    """

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, length: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.length = round_up(length)
        shape = (1, kv_heads, self.length + CACHE_ALIGN, head_dim)
        # Separate (not views of one) tensors per layer: torch.compile then updates each in
        # place, where a view of a shared base makes it rewrite the whole base every step.
        with torch.no_grad():
            self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
            self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def tensors(self) -> list[Tensor]:
        """Every buffer: the keys of each layer, then the values."""
        return self.keys + self.values

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def snapshot(self, length: int) -> list[Tensor]:
        """A copy of slots 0..length-1 of every buffer, for :meth:`restore`."""
        return [t[:, :, :length].clone() for t in self.tensors()]

    def restore(self, snapshot: list[Tensor], length: int) -> None:
        for t, saved in zip(self.tensors(), snapshot):
            t[:, :, :length].copy_(saved)

    def zero_(self) -> None:
        for t in self.tensors():
            t.zero_()
