"""Pure-torch submanifold conv against dense conv3d (values and gradients) and against spconv."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from gs_reasoner_ros.model.sparse_conv import (
    SubMConv3d,
    VoxelGrid,
    build_rulebook,
    resolve_backend,
    submanifold_conv3d_torch,
)


def random_sites(n: int, extent: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.unique(torch.randint(0, extent, (n, 3), generator=g), dim=0)


def dense_reference(coord: torch.Tensor, feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Scatter into a dense volume, conv3d (correlation, zero padding), read the active sites."""
    shape = (coord.max(0).values + 1).tolist()
    vol = feat.new_zeros(*shape, feat.shape[1])
    vol = vol.index_put((coord[:, 0], coord[:, 1], coord[:, 2]), feat)
    out = F.conv3d(vol.permute(3, 0, 1, 2)[None], weight.permute(0, 4, 1, 2, 3), bias, padding=1)
    return out[0, :, coord[:, 0], coord[:, 1], coord[:, 2]].t()


@pytest.mark.parametrize("method", ["pairs", "gemm"])
def test_matches_dense_conv3d_values_and_gradients(method):
    coord = random_sites(300, 9, seed=0)  # dense enough that most offsets have neighbours
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(len(coord), 5, generator=g, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, 5, generator=g, requires_grad=True)
    bias = torch.randn(4, generator=g, requires_grad=True)
    out = submanifold_conv3d_torch(feat, build_rulebook(coord), weight, bias, method=method)
    ref = dense_reference(coord, feat, weight, bias)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad((out * upstream).sum(), (feat, weight, bias))
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (feat, weight, bias))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_offset_order_is_spconv_layout():
    """weight[:, dx+1, dy+1, dz+1, :] applies to the neighbour at (+dx, +dy, +dz)."""
    coord = torch.tensor([[5, 5, 5], [6, 5, 5], [5, 4, 7]])
    feat = torch.tensor([[0.0], [1.0], [10.0]])
    weight = torch.arange(27.0).reshape(1, 3, 3, 3, 1)
    out = submanifold_conv3d_torch(feat, build_rulebook(coord), weight, None, method="pairs")
    # site 0 sees site 1 at (+1, 0, 0) -> index 2*9+1*3+1 = 22; site 1 sees site 0 at (-1, 0, 0) -> 4
    assert out[:, 0].tolist() == [22.0 * 1.0, 4.0 * 0.0 + 13.0 * 1.0, 13.0 * 10.0]


def test_module_caches_rulebook_per_grid_and_checks_shapes():
    coord = random_sites(50, 6, seed=3)
    grid = VoxelGrid(coord)
    conv = SubMConv3d(3, 3)
    assert conv.weight.shape == (3, 3, 3, 3, 3)
    feat = torch.randn(len(grid), 3)
    conv(feat, grid)
    first = grid.rulebook()
    conv(feat, grid)
    assert grid.rulebook() is first
    with pytest.raises(ValueError, match="shape"):
        conv(torch.randn(len(grid) + 1, 3), grid)
    with pytest.raises(ValueError, match="non-negative"):
        VoxelGrid(torch.tensor([[0, -1, 0]]))
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(torch.device("cpu"), "cudnn")
    assert resolve_backend(torch.device("cpu")) == "torch"


def test_isolated_sites_only_see_themselves():
    coord = torch.tensor([[0, 0, 0], [4, 4, 4]])
    weight = torch.randn(2, 3, 3, 3, 2)
    feat = torch.randn(2, 2)
    out = submanifold_conv3d_torch(feat, build_rulebook(coord), weight, None, method="gemm")
    torch.testing.assert_close(out, feat @ weight[:, 1, 1, 1, :].t())


@pytest.mark.skipif(importlib.util.find_spec("spconv") is None, reason="spconv is not installed")
def test_matches_spconv_cpu_single_thread():
    import spconv.pytorch.ops as ops

    threads = torch.get_num_threads()
    patched = ops.get_current_stream
    torch.set_num_threads(1)  # spconv's CPU kernels are racy with more than one thread
    if not torch.cuda.is_available():
        ops.get_current_stream = lambda: 0  # its backward asks CUDA for a stream otherwise
    try:
        coord = random_sites(400, 10, seed=4)
        grid_a, grid_b = VoxelGrid(coord), VoxelGrid(coord)
        conv = SubMConv3d(6, 7)
        torch.nn.init.normal_(conv.bias)
        feat = torch.randn(len(coord), 6, requires_grad=True)
        ours = conv(feat, grid_a, backend="torch")
        theirs = conv(feat, grid_b, backend="spconv")
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
        # a second call on the same grid reuses spconv's cached index pairs
        torch.testing.assert_close(conv(feat, grid_b, backend="spconv"), ours, atol=1e-5, rtol=1e-5)
        g_ours = torch.autograd.grad(ours.square().sum(), (feat, conv.weight))
        g_theirs = torch.autograd.grad(theirs.square().sum(), (feat, conv.weight))
        for a, b in zip(g_ours, g_theirs):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    finally:
        torch.set_num_threads(threads)
        ops.get_current_stream = patched
