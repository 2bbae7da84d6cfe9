"""Dual-path pooling, patch sampling, sine encoding and token layout against independent references."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from gs_reasoner_ros.model.fusion import (InverseDistancePooling, SemanticCrossAttention, SinePositionEncoding3D,
                                          add_row_newlines, bilinear_pool, patch_centers, sample_offsets,
                                          sample_patch_points)


def test_bilinear_pool_equals_llava_onevision_apply_pooling():
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    features = torch.randn(3, 27 * 27, 40, generator=torch.Generator().manual_seed(0))
    owner = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=384, patch_size=14)))
    expected = LlavaOnevisionModel.apply_pooling(owner, features)
    pooled = bilinear_pool(features, stride=2)
    assert pooled.shape == (3, 14 * 14, 40)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def test_sample_offsets_follow_round_linspace():
    offsets = sample_offsets(27, 8).tolist()
    assert offsets == [round(k * 26 / 7) for k in range(8)]
    assert offsets == [0, 4, 7, 11, 15, 19, 22, 26]  # the values quoted in the notes


def test_patch_sampling_and_centres_pick_the_formula_pixels():
    # A map whose value at pixel (r, c) is (r, c, frame): every sample names its own source pixel.
    frames, size = 2, 384
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    maps = torch.stack([torch.stack([rows, cols, torch.full_like(rows, f)], -1) for f in range(frames)]).float()
    samples = sample_patch_points(maps, grid=14, n_points=64)
    centres = patch_centers(maps, grid=14)
    assert samples.shape == (frames, 14, 14, 64, 3) and centres.shape == (frames, 14, 14, 3)
    offsets = [0, 4, 7, 11, 15, 19, 22, 26]
    for f, i, j, k in [(0, 0, 0, 0), (1, 13, 13, 63), (0, 5, 9, 17), (1, 2, 11, 42)]:
        a, b = divmod(k, 8)  # row-major over the 8x8 sample grid
        assert samples[f, i, j, k].tolist() == [27 * i + offsets[a], 27 * j + offsets[b], f]
        assert centres[f, i, j].tolist() == [27 * i + 13, 27 * j + 13, f]
    assert samples[..., :2].max() == 377  # the last 6 rows/columns of the 384 crop are never used


def _direct_sine_encoding(point, hidden, temperature=10000.0):
    per_axis = hidden // 3
    out = [0.0] * hidden
    for axis in range(3):
        for i in range(per_axis):
            phase = point[axis] / temperature ** (2 * (i // 2) / per_axis)
            out[axis * per_axis + i] = math.sin(phase) if i % 2 == 0 else math.cos(phase)
    return out


@pytest.mark.parametrize("hidden", [64, 3584])  # 21 per axis (odd, padded) and the release's 1194
def test_sine_encoding_equals_the_formula(hidden):
    points = torch.tensor([[0.0, 0.0, 0.0], [1.25, -3.5, 0.75], [-7.9, 4.4, 2.1]])
    encoded = SinePositionEncoding3D(hidden)(points)
    expected = torch.tensor([_direct_sine_encoding(p.tolist(), hidden) for p in points])
    torch.testing.assert_close(encoded, expected, rtol=0, atol=2e-6)
    assert encoded[:, 3 * (hidden // 3):].abs().max() == 0  # zero padding to the width


def test_sine_encoding_keeps_the_input_dtype():
    points = torch.tensor([[1.5, 2.5, -0.5]], dtype=torch.bfloat16)
    encoded = SinePositionEncoding3D(96)(points)
    assert encoded.dtype == torch.bfloat16
    torch.testing.assert_close(encoded.float(), SinePositionEncoding3D(96)(points.float()).bfloat16().float())


def _loop_dual_path(position, semantic, features, points, centres, query):
    """Both paths, written per patch as the notes describe them (§1.6), in float64."""
    w_pos, b_pos = position.mlp.weight.double(), position.mlp.bias.double()
    wq, wk, wv = (m.weight.double() for m in (semantic.q_proj, semantic.k_proj, semantic.v_proj))
    heads, head_dim = semantic.num_heads, semantic.head_dim
    pos_out, sem_out = [], []
    for p in range(features.shape[0]):
        f = features[p].double()
        projected = f @ w_pos.T + b_pos  # Linear on each of the 64 points
        inv = [1.0 / (float(torch.linalg.norm(points[p, k].double() - centres[p].double())) + 1e-8)
               for k in range(f.shape[0])]
        weights = torch.tensor(inv, dtype=torch.float64) / sum(inv)
        pos_out.append((weights[:, None] * projected).sum(0))
        q, k, v = wq @ query[p].double(), f @ wk.T, f @ wv.T
        per_head = []
        for h in range(heads):
            part = slice(h * head_dim, (h + 1) * head_dim)
            attention = torch.softmax(k[:, part] @ q[part] / math.sqrt(head_dim), dim=0)
            per_head.append(attention @ v[:, part])
        sem_out.append(torch.cat(per_head))
    return torch.stack(pos_out), torch.stack(sem_out)


def test_dual_path_equals_an_explicit_per_patch_loop():
    g = torch.Generator().manual_seed(3)
    patches, count = 6, 64
    position = InverseDistancePooling(1232, 2048)
    semantic = SemanticCrossAttention(48, 1232, num_heads=8).eval()
    with torch.no_grad():
        for module in (position, semantic):
            for p in module.parameters():
                p.normal_(0, 0.05, generator=g)
    features = torch.randn(patches, count, 1232, generator=g)
    points = torch.rand(patches, count, 3, generator=g) * 4
    centres = torch.rand(patches, 3, generator=g) * 4
    points[1, 5] = centres[1]  # a sample ON the centre (distance 0, weight 1e8) as with invalid depth
    points[2, :10] = centres[2]  # several of them: they share the weight
    query = torch.randn(patches, 48, generator=g)
    with torch.no_grad():
        pos, sem = position(features, points, centres), semantic(query, features)
    ref_pos, ref_sem = _loop_dual_path(position, semantic, features, points, centres, query)
    assert pos.shape == (patches, 2048) and sem.shape == (patches, 1232)
    torch.testing.assert_close(pos.double(), ref_pos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sem.double(), ref_sem, rtol=1e-5, atol=1e-5)


def test_semantic_attention_dropout_only_in_training():
    attention = SemanticCrossAttention(16, 64, num_heads=8)
    query, features = torch.randn(4, 16), torch.randn(4, 10, 64)
    attention.eval()
    torch.testing.assert_close(attention(query, features), attention(query, features), rtol=0, atol=0)
    attention.train()
    torch.manual_seed(0)
    assert not torch.equal(attention(query, features), attention.eval()(query, features))


def test_row_newlines_layout():
    frames, side, hidden = 2, 14, 5
    tokens = torch.arange(frames * side * side * hidden, dtype=torch.float32).view(frames, side * side, hidden)
    newline = torch.full((hidden,), -1.0)
    laid = add_row_newlines(tokens, newline)
    assert laid.shape == (frames * 210, hidden)
    for f, i, j in [(0, 0, 0), (1, 13, 13), (0, 6, 3), (1, 0, 13)]:
        assert torch.equal(laid[f * 210 + i * 15 + j], tokens[f, i * side + j])
    newline_rows = [f * 210 + i * 15 + 14 for f in range(frames) for i in range(side)]
    assert (laid[newline_rows] == -1).all()
    assert (laid[[r for r in range(len(laid)) if r not in newline_rows]] >= 0).all()
