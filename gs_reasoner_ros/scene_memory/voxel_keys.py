"""The voxel-key layout that the numpy and torch voxel maps and the Triton kernels share.

A voxel key is one int64: the voxel's integer coordinates i, j, k (floor of the point in voxel
units) each shifted by OFFSET into [0, FIELD] and packed BITS bits apiece, i in the high bits.
The hash table maps keys to dense slots by Fibonacci hashing (the top bits of key * HASH_MUL);
its free entries hold EMPTY, evicted keys leave GONE. Keys are never negative, so no key is
ever mistaken for a marker.

The same packing carries running sums: a point's offset inside its voxel in steps of 1/FRAC
voxel, or a colour channel, three to an int64, summed over runs of at most MAX_RUN points.

Works on numpy arrays and torch tensors alike; imports neither torch nor triton.
"""
from __future__ import annotations

import numpy as np

# the key
BITS = 21  # per axis: +-2**20 voxels (+-21 km at 2 cm)
OFFSET = 1 << (BITS - 1)
FIELD = (1 << BITS) - 1

# the hash table
EMPTY = -1
GONE = -2  # tombstone of an evicted key: probing walks past it, inserting never reuses it
HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: top bits of key * 2**64/phi
HASH_MUL_SIGNED = int(HASH_MUL) - (1 << 64)  # the same bits as int64, for torch and Triton

# Run sums pack three 21-bit fields in one int64: a point's offset inside its voxel in steps of
# 1/2048 voxel (11 bits; 0.01 mm at 2 cm) or a colour channel (8 bits), times at most 1023
# points per run (10 bits), so one integer reduceat sums three axes or channels at once.
FRAC = 2048
MAX_RUN = 1023


def pack(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Three non-negative ints below 2**21 in one int64 (a in the high bits, c in the low)."""
    if isinstance(a, np.ndarray):
        a, b, c = a.astype(np.int64), b.astype(np.int64), c.astype(np.int64, copy=False)
    else:  # torch tensors
        a, b, c = a.long(), b.long(), c.long()
    packed = a << (2 * BITS)
    packed |= b << BITS
    packed |= c
    return packed


def unpack(packed: np.ndarray) -> list[np.ndarray]:
    """[a, b, c] of pack."""
    return [(packed >> (2 * BITS)) & FIELD, (packed >> BITS) & FIELD, packed & FIELD]
