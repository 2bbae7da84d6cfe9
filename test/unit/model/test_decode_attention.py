"""The split-cache decode attention kernel (Triton; on CPU in Triton's interpreter) against
softmax attention written out directly."""
from __future__ import annotations

import pytest
import torch

from gs_reasoner_ros.model import decode_attention as split_attention

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not split_attention.available(DEVICE),
                                reason="triton is not importable (CPU runs need it for its interpreter)")


def reference(q, keys, values, pos: int, scale: float) -> torch.Tensor:
    """Query head g of kv head h against slots 0..pos, in float64."""
    k, v = keys[0, :, : pos + 1].double(), values[0, :, : pos + 1].double()
    scores = torch.einsum("hgd,hsd->hgs", q.double(), k) * scale
    return torch.einsum("hgs,hsd->hgd", scores.softmax(-1), v)


@pytest.mark.parametrize("groups,head_dim", [(7, 32), (1, 16), (4, 64)])
def test_matches_softmax_attention_at_every_kind_of_position(groups, head_dim):
    gen = torch.Generator().manual_seed(groups)
    heads, slots, splits, block = 2, 200, 4, 16
    q = torch.randn(heads, groups, head_dim, generator=gen).to(DEVICE)
    keys = torch.randn(1, heads, slots, head_dim, generator=gen).to(DEVICE)
    values = torch.randn(1, heads, slots, head_dim, generator=gen).to(DEVICE)
    # first slot; inside one block; a block edge; fewer slots than pieces; the last slot
    for pos in (0, 5, 15, 16, 63, 64, 130, slots - 1):
        got = split_attention.decode_attention(q, keys, values, torch.tensor([pos], device=DEVICE),
                                               head_dim**-0.5, splits=splits, block=block)
        assert got.shape == (heads, groups, head_dim) and got.dtype == q.dtype
        torch.testing.assert_close(got.double().cpu(), reference(q, keys, values, pos, head_dim**-0.5).cpu(),
                                   rtol=1e-5, atol=1e-5)


def test_slots_past_the_position_are_never_read():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 16, generator=gen).to(DEVICE)
    keys = torch.randn(1, 2, 96, 16, generator=gen).to(DEVICE)
    values = torch.randn(1, 2, 96, 16, generator=gen).to(DEVICE)
    clean = split_attention.decode_attention(q, keys, values, torch.tensor([40], device=DEVICE), 0.25, splits=8, block=16)
    keys[:, :, 41:] = float("nan")
    values[:, :, 41:] = float("inf")
    poisoned = split_attention.decode_attention(q, keys, values, torch.tensor([40], device=DEVICE), 0.25, splits=8, block=16)
    torch.testing.assert_close(poisoned, clean, rtol=0, atol=0)


def test_reads_a_cache_with_spare_slots_and_head_stride():
    # the decoder's caches are (1, kv_heads, slots + spare, head_dim) buffers attended in full
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(4, 2, 32, generator=gen).to(DEVICE)
    keys = torch.randn(1, 4, 128 + 64, 32, generator=gen).to(DEVICE)
    values = torch.randn(1, 4, 128 + 64, 32, generator=gen).to(DEVICE)
    got = split_attention.decode_attention(q, keys, values, torch.tensor([127], device=DEVICE), 0.2, splits=3, block=32)
    torch.testing.assert_close(got.double().cpu(), reference(q, keys, values, 127, 0.2).cpu(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bfloat16 dot products need the GPU (numpy has no bfloat16)")
def test_bfloat16_cache_on_the_gpu():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(4, 7, 128, generator=gen).to(DEVICE, torch.bfloat16)
    keys = torch.randn(1, 4, 7000, 128, generator=gen).to(DEVICE, torch.bfloat16)
    values = torch.randn(1, 4, 7000, 128, generator=gen).to(DEVICE, torch.bfloat16)
    got = split_attention.decode_attention(q, keys, values, torch.tensor([6999], device=DEVICE), 128**-0.5)
    torch.testing.assert_close(got.double().cpu(), reference(q, keys, values, 6999, 128**-0.5).cpu(),
                               rtol=2e-2, atol=2e-2)


def test_mismatched_cache_is_a_clear_error():
    q = torch.zeros(2, 3, 16)
    with pytest.raises(ValueError, match="do not match"):
        split_attention.decode_attention(q, torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 16), torch.tensor([0]), 1.0)
