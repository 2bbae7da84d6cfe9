"""Space-filling-curve codes against slow scalar implementations and curve properties."""

from __future__ import annotations

import itertools

import pytest
import torch

from gs_reasoner_ros.model.serialization import (
    encode,
    hilbert_encode,
    serialization_depth,
    serialize,
    z_order_encode,
)


def slow_morton(x: int, y: int, z: int, depth: int) -> int:
    code = 0
    for i in range(depth):
        code |= ((x >> i) & 1) << (3 * i + 2)
        code |= ((y >> i) & 1) << (3 * i + 1)
        code |= ((z >> i) & 1) << (3 * i)
    return code


def slow_hilbert(p: list[int], bits: int) -> int:
    """Skilling (2004) AxesToTranspose, scalar, with its explicit Gray-encode step."""
    x = list(p)
    top = 1 << (bits - 1)
    q = top
    while q > 1:
        low = q - 1
        for i in range(3):
            if x[i] & q:
                x[0] ^= low
            else:
                t = (x[0] ^ x[i]) & low
                x[0] ^= t
                x[i] ^= t
        q >>= 1
    for i in range(1, 3):
        x[i] ^= x[i - 1]
    t = 0
    q = top
    while q > 1:
        if x[2] & q:
            t ^= q - 1
        q >>= 1
    x = [v ^ t for v in x]
    code = 0
    for level in range(bits - 1, -1, -1):
        for i in range(3):
            code = (code << 1) | ((x[i] >> level) & 1)
    return code


def cube(bits: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(1 << bits), repeat=3)), dtype=torch.int64)


def test_morton_matches_bit_interleave():
    g = torch.Generator().manual_seed(0)
    pts = torch.randint(0, 1 << 16, (500, 3), generator=g)
    expected = [slow_morton(*p, 16) for p in pts.tolist()]
    assert z_order_encode(pts, 16).tolist() == expected


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_hilbert_matches_scalar_skilling_and_is_bijective(bits):
    pts = cube(bits)
    codes = hilbert_encode(pts, bits)
    assert codes.tolist() == [slow_hilbert(p, bits) for p in pts.tolist()]
    assert sorted(codes.tolist()) == list(range(len(pts)))


def test_hilbert_scalar_agreement_deep_grid():
    g = torch.Generator().manual_seed(1)
    pts = torch.randint(0, 1 << 11, (300, 3), generator=g)
    assert hilbert_encode(pts, 11).tolist() == [slow_hilbert(p, 11) for p in pts.tolist()]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_hilbert_consecutive_cells_are_face_adjacent(bits):
    pts = cube(bits)
    walk = pts[torch.argsort(hilbert_encode(pts, bits))]
    steps = (walk[1:] - walk[:-1]).abs().sum(1)
    assert torch.all(steps == 1)
    assert walk[0].tolist() == [0, 0, 0]


def test_trans_orders_swap_x_and_y():
    pts = torch.tensor([[1, 5, 3], [7, 0, 2], [4, 4, 9]])
    swapped = pts[:, [1, 0, 2]]
    assert torch.equal(encode(pts, "z-trans", 4), z_order_encode(swapped, 4))
    assert torch.equal(encode(pts, "hilbert-trans", 4), hilbert_encode(swapped, 4))


def test_depth_rule_and_limits():
    assert serialization_depth(torch.tensor([[0, 0, 0]])) == 1
    assert serialization_depth(torch.tensor([[0, 7, 0]])) == 4  # (7 + 1).bit_length()
    assert serialization_depth(torch.tensor([[0, 6, 0]])) == 3
    with pytest.raises(ValueError, match="at most"):
        serialization_depth(torch.tensor([[1 << 16, 0, 0]]))
    with pytest.raises(ValueError, match="order"):
        encode(torch.zeros(2, 3, dtype=torch.long), "peano", 2)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*2\)"):
        hilbert_encode(torch.tensor([[4, 0, 0]]), 2)


def test_serialize_orders_inverses_and_seeded_shuffle():
    g = torch.Generator().manual_seed(2)
    pts = torch.unique(torch.randint(0, 40, (400, 3), generator=g), dim=0)
    orders = ("z", "z-trans", "hilbert", "hilbert-trans")
    ser = serialize(pts, orders)
    assert ser.depth == serialization_depth(pts)
    for i, name in enumerate(orders):
        codes = encode(pts, name, ser.depth)
        assert torch.all(codes[ser.order[i]][1:] > codes[ser.order[i]][:-1])
        assert torch.equal(ser.order[i][ser.inverse[i]], torch.arange(len(pts)))
    a = serialize(pts, orders, shuffle=True, generator=torch.Generator().manual_seed(5))
    b = serialize(pts, orders, shuffle=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.order, b.order)
    # a shuffle only permutes which curve sits at which index
    rows = {tuple(r) for r in ser.order.tolist()}
    assert {tuple(r) for r in a.order.tolist()} == rows
