"""Windowed attention against a per-window loop of explicit softmax attention."""

from __future__ import annotations

import pytest
import torch

from gs_reasoner_ros.model import attention
from gs_reasoner_ros.model.attention import resolve_backend, window_attention, window_partition


def reference(q, k, v, cu, scale=None):
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = scale if scale is not None else q.shape[-1] ** -0.5
        scores = torch.einsum("qhd,khd->hqk", q[a:b].double(), k[a:b].double()) * s
        out[a:b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[a:b].double()).to(q.dtype)
    return out


def qkv(total, heads=3, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(total, heads, dim, generator=g) for _ in range(3)]


@pytest.mark.parametrize("lengths", [[16, 16, 16], [16, 5, 16, 1, 9], [7]])
def test_sdpa_matches_reference(lengths, monkeypatch):
    monkeypatch.setattr(attention, "SCORE_BUDGET", 2 * 3 * 16 * 16)  # force several chunks
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = qkv(int(cu[-1]))
    out = window_attention(q, k, v, cu, max(lengths), backend="sdpa")
    torch.testing.assert_close(out, reference(q, k, v, cu), atol=1e-5, rtol=1e-5)
    scaled = window_attention(q, k, v, cu, max(lengths), scale=0.3)
    torch.testing.assert_close(scaled, reference(q, k, v, cu, 0.3), atol=1e-5, rtol=1e-5)


def test_gradients_flow_through_windows():
    cu = torch.tensor([0, 6, 10], dtype=torch.int32)
    q, k, v = (t.requires_grad_() for t in qkv(10, heads=2, dim=4, seed=1))
    out = window_attention(q, k, v, cu, 6)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref = reference(q, k, v, cu)
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_partition_single_short_window():
    pad, cu = window_partition(5, 8)
    assert pad.tolist() == [0, 1, 2, 3, 4]
    assert cu.tolist() == [0, 5]


def test_partition_exact_multiple_has_no_padding():
    pad, cu = window_partition(12, 4)
    assert pad.tolist() == list(range(12))
    assert cu.tolist() == [0, 4, 8, 12]


def test_partition_pads_last_window_with_previous_window_tokens():
    pad, cu = window_partition(10, 4)
    # windows [0..3], [4..7], [8, 9 | copies of in-window positions 2, 3 of window 1 = tokens 6, 7]
    assert pad.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 7]
    assert cu.tolist() == [0, 4, 8, 12]
    assert pad[8:].sort().values.tolist() == list(range(10 - 4, 10))  # the last 4 tokens


def test_padded_attention_equals_last_window_over_last_tokens():
    n, size = 11, 4
    q, k, v = qkv(n, seed=2)
    pad, cu = window_partition(n, size)
    out = window_attention(q[pad], k[pad], v[pad], cu, size)[:n]
    full = reference(q, k, v, torch.tensor([0, 4, 8, 11]))
    torch.testing.assert_close(out[:8], full[:8], atol=1e-5, rtol=1e-5)
    # tokens 8..10 attend over tokens 7..10 (the last `size` tokens)
    tail = reference(q[7:], k[7:], v[7:], torch.tensor([0, 4]))
    torch.testing.assert_close(out[8:], tail[1:], atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise():
    q, k, v = qkv(6)
    with pytest.raises(ValueError, match="cu_seqlens"):
        window_attention(q, k, v, torch.tensor([0, 4], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="shape"):
        window_attention(q, k[:5], v, torch.tensor([0, 6], dtype=torch.int32), 6)
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(torch.device("cpu"), "xformers")
    with pytest.raises(ValueError, match="patch_size"):
        window_partition(4, 0)
    assert resolve_backend(torch.device("cpu")) == "sdpa"
