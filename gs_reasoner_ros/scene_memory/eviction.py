"""The eviction policies that both the keyframe store and the voxel map offer when full:
"oldest" drops what was seen longest ago, "farthest" what lies farthest from the camera."""
from __future__ import annotations


def check_eviction(eviction: str) -> str:
    if eviction not in ("oldest", "farthest"):
        raise ValueError(f"eviction must be 'oldest' or 'farthest', got {eviction!r}")
    return eviction
