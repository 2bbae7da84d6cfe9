"""Attention of one new token over a static KV cache, split along the cache (Triton).

A decode step of Qwen2-7B attends 28 query heads over 4 kv heads. Batched matmuls (or SDPA) give
the GPU only a handful of independent pieces of work per layer, so most SMs idle while the
cache is read: on an H100 that cost 0.6 ms per token where reading the cache needs 0.14 ms
(scripts/gpu/RESULTS.md). Here the cache is cut into ``splits`` pieces per kv head; each program
reads its piece once for all query heads of its group (they are the rows of one small matrix
product), keeps a running softmax, and the pieces are combined by their log-sum-exp at the end.

The number of cache slots attended is read on the device (``pos + 1``), so one captured CUDA
graph serves every position: no attention-length buckets, no slot past ``pos`` is read.

The arithmetic differs from transformers' eager attention only in the order of the sums and in
keeping the scores in float32 (they are rounded to the model dtype there).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without triton: the decoder falls back to matmul attention
    triton = None

HAVE_TRITON = triton is not None


def available(device: torch.device) -> bool:
    """Whether the kernel can run for tensors on ``device`` (natively on CUDA; on CPU only in
    Triton's interpreter, which the tests use)."""
    if not HAVE_TRITON:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


if HAVE_TRITON:

    @triton.jit
    def _split_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, acc_ptr, max_ptr, sum_ptr,
                      stride_head, stride_slot, scale,
                      GROUPS: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
                      BLOCK: tl.constexpr, SPLITS: tl.constexpr, PRECISION: tl.constexpr):
        head = tl.program_id(0)
        split = tl.program_id(1)
        length = tl.load(pos_ptr).to(tl.int32) + 1
        chunk = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK) * BLOCK
        lo = split * chunk
        hi = tl.minimum(lo + chunk, length)

        rows = tl.arange(0, ROWS)
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + (head * GROUPS + rows)[:, None] * HEAD_DIM + dims[None, :],
                    mask=(rows < GROUPS)[:, None], other=0.0)
        run_max = tl.full([ROWS], float("-inf"), tl.float32)
        run_sum = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
        base = head * stride_head
        for start in range(lo, hi, BLOCK):  # every block holds at least one live slot
            slots = start + tl.arange(0, BLOCK)
            live = slots < hi
            offs = base + slots[:, None] * stride_slot + dims[None, :]
            k = tl.load(k_ptr + offs, mask=live[:, None], other=0.0)
            # .to: under torch.compile `scale` arrives as a float64 constant
            scores = (tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale).to(tl.float32)
            scores = tl.where(live[None, :], scores, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(scores, 1))
            p = tl.exp(scores - new_max[:, None])
            rescale = tl.exp(run_max - new_max)
            run_sum = run_sum * rescale + tl.sum(p, 1)
            v = tl.load(v_ptr + offs, mask=live[:, None], other=0.0)
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            run_max = new_max

        out = (head * SPLITS + split) * ROWS + rows
        tl.store(acc_ptr + out[:, None] * HEAD_DIM + dims[None, :], acc)
        tl.store(max_ptr + out, run_max)
        tl.store(sum_ptr + out, run_sum)

    @triton.jit
    def _combine_kernel(acc_ptr, max_ptr, sum_ptr, out_ptr,
                        GROUPS: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr,
                        SPLITS_P2: tl.constexpr):
        # One program per (kv head, query row): weigh each piece by exp(its max - the max over
        # pieces). Pieces past the attended length hold max -inf and sum 0: weight exactly 0.
        head = tl.program_id(0)
        row = tl.program_id(1)
        pieces = tl.arange(0, SPLITS_P2)
        dims = tl.arange(0, HEAD_DIM)
        live = pieces < SPLITS
        at = (head * SPLITS + pieces) * ROWS + row
        piece_max = tl.load(max_ptr + at, mask=live, other=float("-inf"))
        piece_sum = tl.load(sum_ptr + at, mask=live, other=0.0)
        weight = tl.exp(piece_max - tl.max(piece_max, 0))
        acc = tl.load(acc_ptr + at[:, None] * HEAD_DIM + dims[None, :], mask=live[:, None], other=0.0)
        out = tl.sum(acc * weight[:, None], 0) / tl.sum(piece_sum * weight, 0)
        tl.store(out_ptr + (head * GROUPS + row) * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))


def decode_attention(q: Tensor, keys: Tensor, values: Tensor, pos: Tensor, scale: float,
                     splits: int = 32, block: int = 64, warps: int = 4) -> Tensor:
    """Softmax attention of one token's query heads over cache slots ``0..pos``.

    Args:
        q: (kv_heads, groups, head_dim): the query heads grouped by the kv head they read
            (query head ``h`` reads kv head ``h // groups``, as transformers does).
        keys, values: (1, kv_heads, slots, head_dim) caches, contiguous in their last dim.
        pos: (1,) integer tensor on the device: the newest written slot; ``0..pos`` are attended.
        scale: multiplies the scores (``head_dim ** -0.5``).
        splits: pieces each kv head's cache is cut into (work items: kv_heads * splits).
        block: slots per inner step.
        warps: warps per program of the split kernel.
    Returns (kv_heads, groups, head_dim) in the dtype of ``q``.
    """
    kv_heads, groups, head_dim = q.shape
    if keys.shape[:2] != (1, kv_heads) or keys.shape[-1] != head_dim or values.shape != keys.shape:
        raise ValueError(f"keys/values {tuple(keys.shape)}/{tuple(values.shape)} do not match q {tuple(q.shape)}")
    if keys.stride() != values.stride() or keys.stride(-1) != 1:
        raise ValueError("keys and values must share strides with a contiguous last dimension")
    rows = max(16, triton.next_power_of_2(groups))  # tl.dot needs at least 16 rows
    acc = torch.empty(kv_heads, splits, rows, head_dim, dtype=torch.float32, device=q.device)
    run_max = torch.empty(kv_heads, splits, rows, dtype=torch.float32, device=q.device)
    run_sum = torch.empty_like(run_max)
    _split_kernel[(kv_heads, splits)](
        q.contiguous(), keys, values, pos, acc, run_max, run_sum,
        keys.stride(1), keys.stride(2), scale,
        GROUPS=groups, ROWS=rows, HEAD_DIM=head_dim, BLOCK=block, SPLITS=splits,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # float32 stays float32 (no TF32)
        num_warps=warps,
    )
    out = torch.empty(kv_heads, groups, head_dim, dtype=q.dtype, device=q.device)
    _combine_kernel[(kv_heads, groups)](acc, run_max, run_sum, out, GROUPS=groups, ROWS=rows, HEAD_DIM=head_dim,
                                        SPLITS=splits, SPLITS_P2=triton.next_power_of_2(splits))
    return out
