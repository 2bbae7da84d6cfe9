"""Windowed (variable-length) self-attention for Sonata's serialized attention.

Tokens are packed as ``(total, H, D)``; window ``i`` is ``tokens[cu_seqlens[i]:cu_seqlens[i+1]]``
and attends only to itself, non-causally, with scale ``D**-0.5`` by default.

Backends, picked per call (or forced by ``backend=`` / ``GS_REASONER_ATTENTION_BACKEND`` =
``auto|sdpa|varlen|flash_attn``):

- ``sdpa`` (CPU and fallback): windows of equal length are reshaped to ``(windows, H, L, D)`` and
  sent through ``scaled_dot_product_attention`` in chunks, so at most a few windows' score
  matrices exist at a time; each other length gets its own call.
- ``varlen`` on CUDA: ``torch.nn.attention.varlen.varlen_attn`` (libtorch's flash kernels).
- ``flash_attn`` on CUDA when that package is installed (``flash_attn_varlen_func``).

On CUDA q, k, v are cast to fp16 for the kernel and the result back to the input dtype, as the
authors' flash-attention path does; on CPU everything stays in the input dtype.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "sdpa", "varlen", "flash_attn")
BACKEND_ENV = "GS_REASONER_ATTENTION_BACKEND"
SCORE_BUDGET = 64 * 2**20  # floats of attention scores per SDPA call on the fallback path


def window_partition(n: int, patch_size: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Cut ``n`` serialized tokens into attention windows the way PTv3 does (batch of one).

    Returns ``(pad_index, cu_seqlens)``: the padded token sequence is ``tokens[pad_index]`` and
    its windows are delimited by ``cu_seqlens`` (int32).  With ``n <= patch_size`` there is one
    window of ``n`` tokens.  Otherwise ``n`` is padded up to a multiple of ``patch_size``; the
    missing tail of the last window repeats the tokens at the same in-window positions of the
    previous window, so the last window holds exactly the last ``patch_size`` tokens.  The first
    ``n`` padded tokens are the original ones, in order; the outputs of the others are dropped.
    """
    if n < 0 or patch_size <= 0:
        raise ValueError(f"need n >= 0 and patch_size > 0, got n={n}, patch_size={patch_size}")
    if n <= patch_size:
        pad_index = torch.arange(n, device=device)
        cu = torch.tensor([0, n], dtype=torch.int32, device=device)
        return pad_index, cu
    n_pad = -(-n // patch_size) * patch_size
    pad_index = torch.arange(n_pad, device=device)
    pad_index[n:] -= patch_size
    cu = torch.arange(0, n_pad + 1, patch_size, dtype=torch.int32, device=device)
    return pad_index, cu


def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _flash_attn():
    try:
        import flash_attn  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - a broken CUDA build is as good as absent
        return None
    return flash_attn


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """Concrete backend for ``device``: an explicit choice, the environment variable, or auto."""
    choice = backend or os.environ.get(BACKEND_ENV, "auto")
    if choice not in BACKENDS:
        raise ValueError(f"unknown attention backend {choice!r}; expected one of {BACKENDS}")
    if choice == "auto":
        if device.type == "cuda":
            if _varlen_fn() is not None:
                return "varlen"
            if _flash_attn() is not None:
                return "flash_attn"
        return "sdpa"
    if choice == "varlen" and _varlen_fn() is None:
        raise ValueError("attention backend 'varlen' needs torch.nn.attention.varlen (torch >= 2.10)")
    if choice == "flash_attn" and _flash_attn() is None:
        raise ValueError("attention backend 'flash_attn' was requested but flash_attn cannot be imported")
    return choice


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> Tensor:
    """Attention of every token to the tokens of its own window; returns ``(total, H, D)``."""
    if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share a (total, H, D) shape, got {q.shape}, {k.shape}, {v.shape}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens must be a 1-D tensor of at least two offsets")
    name = resolve_backend(q.device, backend)
    dtype = q.dtype
    if q.device.type == "cuda":
        q, k, v = (t.half().contiguous() for t in (q, k, v))  # flash kernels want dense fp16
    if name == "varlen":
        out = _window_attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale)
    elif name == "flash_attn":
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        out = _flash_attn().flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, softmax_scale=scale)
    else:
        out = _window_attention_sdpa(q, k, v, cu_seqlens, scale)
    return out.to(dtype)


def _window_attention_varlen(q, k, v, cu_seqlens, max_seqlen, scale):
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    kwargs = {} if scale is None or scale == q.shape[-1] ** -0.5 else {"scale": scale}
    out = _varlen_fn()(q, k, v, cu, cu, max_seqlen, max_seqlen, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _window_attention_sdpa(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, scale: float | None) -> Tensor:
    total, heads, _ = q.shape
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != total or any(b > a for a, b in zip(bounds[1:], bounds[:-1])):
        raise ValueError(f"cu_seqlens must rise from 0 to {total} (the token count)")
    starts = torch.tensor(bounds[:-1], dtype=torch.int64)
    lengths = torch.tensor(bounds[1:], dtype=torch.int64) - starts
    if lengths.numel() and bool((lengths == lengths[0]).all()) and lengths[0] > 0:
        return _uniform_windows_sdpa(q, k, v, int(lengths[0]), scale)
    out = torch.empty_like(q)
    for length in torch.unique(lengths).tolist():
        if length == 0:
            continue
        window_starts = starts[lengths == length].to(q.device)
        per_call = max(1, SCORE_BUDGET // (heads * length * length))
        for chunk in window_starts.split(per_call):
            idx = (chunk[:, None] + torch.arange(length, device=q.device)).reshape(-1)
            shape = (chunk.numel(), length, heads, -1)
            qw, kw, vw = (t[idx].reshape(shape).transpose(1, 2) for t in (q, k, v))
            ow = F.scaled_dot_product_attention(qw, kw, vw, scale=scale)
            out[idx] = ow.transpose(1, 2).reshape(chunk.numel() * length, heads, -1)
    return out


def _uniform_windows_sdpa(q: Tensor, k: Tensor, v: Tensor, length: int, scale: float | None) -> Tensor:
    """Contiguous windows of one length: a reshape, no gather (the common PTv3 case)."""
    total, heads, dim = q.shape
    per_call = max(1, SCORE_BUDGET // (heads * length * length))
    outs = []
    for start in range(0, total, per_call * length):
        sl = slice(start, min(total, start + per_call * length))
        qw, kw, vw = (t[sl].reshape(-1, length, heads, dim).transpose(1, 2) for t in (q, k, v))
        ow = F.scaled_dot_product_attention(qw, kw, vw, scale=scale)
        outs.append(ow.transpose(1, 2).reshape(-1, heads, dim))
    return torch.cat(outs) if len(outs) > 1 else outs[0]
