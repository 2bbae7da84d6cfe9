"""Sonata (PTv3 encoder): config, official key layout, preprocessing, pooling, blocks, upcast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gs_reasoner_ros.model.configuration import SonataConfig
from gs_reasoner_ros.model.serialization import serialize
from gs_reasoner_ros.model.sonata import (
    Block,
    GridPooling,
    SerializedAttention,
    Sonata,
    StageContext,
    grid_pool,
    grid_sample,
    upcast,
)
from gs_reasoner_ros.model.sparse_conv import VoxelGrid

TINY = dict(enc_depths=(1, 1, 1, 1, 1), enc_channels=(8, 8, 16, 16, 16), enc_num_head=(1, 2, 2, 4, 4),
            enc_patch_size=(16,) * 5)


def official_shapes(cfg: SonataConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict layout of the authors' PTv3 encoder, written out from its description."""
    c0 = cfg.enc_channels[0]
    shapes = {"embedding.stem.linear.weight": (c0, 6), "embedding.stem.linear.bias": (c0,),
              "embedding.stem.norm.weight": (c0,), "embedding.stem.norm.bias": (c0,)}
    for s, (depth, c) in enumerate(zip(cfg.enc_depths, cfg.enc_channels)):
        p = f"enc.enc{s}."
        if s > 0:
            shapes.update({p + "down.proj.weight": (c, cfg.enc_channels[s - 1]), p + "down.proj.bias": (c,),
                           p + "down.norm.0.weight": (c,), p + "down.norm.0.bias": (c,)})
        hidden = int(c * cfg.mlp_ratio)
        for b in range(depth):
            q = f"{p}block{b}."
            shapes.update({
                q + "cpe.0.weight": (c, 3, 3, 3, c), q + "cpe.0.bias": (c,),
                q + "cpe.1.weight": (c, c), q + "cpe.1.bias": (c,),
                q + "cpe.2.weight": (c,), q + "cpe.2.bias": (c,),
                q + "norm1.0.weight": (c,), q + "norm1.0.bias": (c,),
                q + "attn.qkv.weight": (3 * c, c), q + "attn.qkv.bias": (3 * c,),
                q + "attn.proj.weight": (c, c), q + "attn.proj.bias": (c,),
                q + "norm2.0.weight": (c,), q + "norm2.0.bias": (c,),
                q + "mlp.0.fc1.weight": (hidden, c), q + "mlp.0.fc1.bias": (hidden,),
                q + "mlp.0.fc2.weight": (c, hidden), q + "mlp.0.fc2.bias": (c,),
            })
    return shapes


def test_released_config_and_dict_round_trip():
    cfg = SonataConfig()
    assert cfg.out_channels == 48 + 96 + 192 + 384 + 512
    again = SonataConfig.from_dict(cfg.to_dict())
    assert again == cfg
    small = SonataConfig.from_dict({"enc_patch_size": [64] * 5, "drop_path": 0.3, "enc_mode": True})
    assert small.enc_patch_size == (64,) * 5 and small.enc_depths == cfg.enc_depths
    assert SonataConfig.from_dict(None) == cfg
    with pytest.raises(ValueError, match="unknown Sonata config keys"):
        SonataConfig.from_dict({"enc_chanels": [1]})
    with pytest.raises(ValueError, match="enc_mode"):
        SonataConfig.from_dict({"enc_mode": False})
    with pytest.raises(ValueError, match="enc_num_head"):
        SonataConfig(enc_num_head=(3, 6))
    with pytest.raises(ValueError, match="divisible"):
        SonataConfig(enc_num_head=(5, 6, 12, 24, 32))
    with pytest.raises(ValueError, match="order"):
        SonataConfig(order=("z", "peano"))


def test_state_dict_is_the_official_layout():
    cfg = SonataConfig()
    with torch.device("meta"):
        model = Sonata(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_shapes(cfg)
    n_params = sum(math.prod(s) for s in got.values())
    assert 108e6 < n_params < 109e6  # "~108.5 M" in the model notes


def test_grid_sample_keeps_one_point_per_voxel():
    g = torch.Generator().manual_seed(0)
    coord = torch.rand(2000, 3, generator=g) * 0.3
    voxel = torch.floor(coord / 0.05).long()
    first = grid_sample(coord, 0.05)
    keys = {tuple(v) for v in voxel.tolist()}
    assert len(first.index) == len(keys) == len(first.grid_coord)
    assert {tuple(v) for v in voxel[first.index].tolist()} == keys
    assert torch.equal(first.grid_coord[first.inverse], voxel - voxel.min(0).values)
    # deterministic: the first point in input order
    seen: dict[tuple, int] = {}
    for i, v in enumerate(voxel.tolist()):
        seen.setdefault(tuple(v), i)
    assert sorted(first.index.tolist()) == sorted(seen.values())
    a = grid_sample(coord, 0.05, deterministic=False, generator=torch.Generator().manual_seed(3))
    b = grid_sample(coord, 0.05, deterministic=False, generator=torch.Generator().manual_seed(3))
    c = grid_sample(coord, 0.05, deterministic=False, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.index, b.index) and not torch.equal(a.index, c.index)
    assert torch.equal(a.inverse, first.inverse)
    assert torch.equal(voxel[a.index], voxel[first.index])  # random picks stay in their voxel


def test_voxel_index_is_float32_division_like_the_authors_numpy():
    g = torch.Generator().manual_seed(7)
    cells = torch.randint(0, 400, (5000, 3), generator=g)
    coord = torch.cat([cells.float() * 0.025, torch.rand(5000, 3, generator=g) * 10])  # many on borders
    expected = np.floor(coord.numpy() / np.float32(0.025)).astype(np.int64)
    expected -= expected.min(0)
    sample = grid_sample(coord, 0.025)
    assert np.array_equal(sample.grid_coord[sample.inverse].numpy(), expected)


def test_grid_pool_matches_dict_reference():
    g = torch.Generator().manual_seed(1)
    fine = torch.unique(torch.randint(0, 7, (120, 3), generator=g), dim=0)
    coarse, cluster = grid_pool(fine, 2)
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(fine.tolist()):
        groups.setdefault(tuple(c // 2 for c in v), []).append(i)
    assert coarse.tolist() == [list(k) for k in sorted(groups)]
    rank = {k: r for r, k in enumerate(sorted(groups))}
    assert cluster.tolist() == [rank[tuple(c // 2 for c in v)] for v in fine.tolist()]
    pool = GridPooling(4, 6)
    feat = torch.randn(len(fine), 4, generator=g)
    out = pool(feat, cluster, len(coarse))
    proj = pool.proj(feat)
    ref = torch.stack([proj[groups[k]].max(0).values for k in sorted(groups)])
    ref = F.gelu(F.layer_norm(ref, (6,), pool.norm[0].weight, pool.norm[0].bias))
    torch.testing.assert_close(out, ref)


def dense_conv(coord, feat, weight, bias):
    shape = (coord.max(0).values + 1).tolist()
    vol = feat.new_zeros(*shape, feat.shape[1]).index_put((coord[:, 0], coord[:, 1], coord[:, 2]), feat)
    out = F.conv3d(vol.permute(3, 0, 1, 2)[None], weight.permute(0, 4, 1, 2, 3), bias, padding=1)
    return out[0, :, coord[:, 0], coord[:, 1], coord[:, 2]].t()


def softmax_attention(qkv, heads):
    n, c3 = qkv.shape
    q, k, v = qkv.reshape(n, 3, heads, c3 // 3 // heads).unbind(1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, -1)


def test_block_matches_hand_written_pre_norm_block():
    torch.manual_seed(2)
    coord = torch.unique(torch.randint(0, 5, (60, 3)), dim=0)
    block = Block(8, 2, patch_size=128, mlp_ratio=4.0, qkv_bias=True, order_index=0)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(len(coord), 8)
    ctx = StageContext(VoxelGrid(coord), serialize(coord, ("z",)))
    conv, lin, norm = block.cpe
    y = x + norm(lin(dense_conv(coord, x, conv.weight, conv.bias)))
    attn = softmax_attention(block.attn.qkv(block.norm1(y)), 2)  # one window holds every voxel
    y = y + block.attn.proj(attn)
    mlp = block.mlp[0]
    y = y + mlp.fc2(F.gelu(mlp.fc1(block.norm2(y))))
    torch.testing.assert_close(block(x, ctx), y, atol=1e-5, rtol=1e-5)


def test_attention_windows_follow_the_curve_and_pad_from_the_previous_window():
    torch.manual_seed(3)
    coord = torch.unique(torch.randint(0, 8, (80, 3)), dim=0)[:50]
    n, size = len(coord), 16
    ser = serialize(coord, ("z", "z-trans", "hilbert", "hilbert-trans"))
    attn = SerializedAttention(8, 2, size, qkv_bias=True, order_index=2)
    x = torch.randn(n, 8)
    got = attn(x, StageContext(VoxelGrid(coord), ser))
    qkv = attn.qkv(x)[ser.order[2]]  # voxels in Hilbert order
    seq = torch.empty(n, 8)
    for start in range(0, n, size):
        stop = min(start + size, n)
        lo = max(0, stop - size)  # the short last window attends over the last `size` voxels
        seq[start:stop] = softmax_attention(qkv[lo:stop], 2)[start - lo:]
    expected = attn.proj(seq[ser.inverse[2]])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_upcast_concatenates_parents_finest_first():
    f0, f1, f2 = torch.arange(4.0)[:, None], 10 + torch.arange(2.0)[:, None], torch.tensor([[100.0, 200.0]])
    c1, c2 = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0])
    out = upcast([f0, f1, f2], [c1, c2])
    assert out.tolist() == [[0, 10, 100, 200], [1, 11, 100, 200], [2, 11, 100, 200], [3, 10, 100, 200]]


def test_real_widths_give_1232_features_per_point():
    torch.manual_seed(4)
    cfg = SonataConfig(enc_depths=(1, 1, 1, 1, 1), enc_patch_size=(32,) * 5)
    model = Sonata(cfg)
    coord = torch.rand(400, 3) * torch.tensor([1.0, 0.8, 0.3]) + 5.0
    color = torch.rand(400, 3)
    with torch.no_grad():
        out = model(coord, color)
    assert out.shape == (400, 1232) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # points sharing a 2.5 cm voxel share every feature
    voxel = torch.floor((coord - coord.min(0).values) / cfg.grid_size).long()
    same = (voxel[:, None] == voxel[None]).all(-1)
    i, j = torch.nonzero(same.triu(1), as_tuple=True)
    assert len(i) > 0
    assert torch.equal(out[i], out[j])


def test_own_voxels_in_one_window_are_order_independent_and_mode_independent():
    torch.manual_seed(5)
    model = Sonata(SonataConfig(**{**TINY, "enc_patch_size": (1024,) * 5}))
    # voxel centres, plus a corner point at the origin so the min-shift leaves them at centres
    cells = torch.unique(torch.randint(1, 12, (150, 3)), dim=0).float()
    coord = torch.cat([torch.zeros(1, 3), (cells + 0.5) * 0.025]) + 3.0
    color = torch.rand(len(coord), 3)
    perm = torch.randperm(len(coord))
    with torch.no_grad():
        out = model(coord, color)
        out_perm = model(coord[perm], color[perm])
        out_random = model(coord, color, deterministic=False, generator=torch.Generator().manual_seed(9))
    assert len(grid_sample(coord - coord.min(0).values, 0.025).index) == len(coord)
    torch.testing.assert_close(out_perm, out[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_random, out, atol=1e-5, rtol=1e-5)


def test_modes_reproducible_and_random_mode_really_random():
    torch.manual_seed(6)
    model = Sonata(SonataConfig(**TINY))
    coord = torch.rand(600, 3) * 0.4
    color = torch.rand(600, 3)
    with torch.no_grad():
        a = model(coord, color)
        b = model(coord, color)
        r1 = model(coord, color, deterministic=False, generator=torch.Generator().manual_seed(1))
        r2 = model(coord, color, deterministic=False, generator=torch.Generator().manual_seed(1))
        r3 = model(coord, color, deterministic=False, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(r1, r2)
    assert not torch.allclose(r1, r3)


def test_runs_in_float32_and_rejects_bad_input():
    model = Sonata(SonataConfig(**TINY)).to(torch.bfloat16)
    coord = torch.rand(50, 3, dtype=torch.float64)
    out = model(coord, torch.rand(50, 3))
    assert out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    out.sum().backward()  # trainable: gradients reach the conv weights
    assert model.enc.enc0.block0.cpe[0].weight.grad is not None
    with pytest.raises(ValueError, match="coord"):
        model(torch.rand(5, 2), torch.rand(5, 2))
    with pytest.raises(ValueError, match="color"):
        model(torch.rand(5, 3), torch.rand(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.tensor([[0.0, float("nan"), 0.0]]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least one"):
        model(torch.zeros(0, 3), torch.zeros(0, 3))
