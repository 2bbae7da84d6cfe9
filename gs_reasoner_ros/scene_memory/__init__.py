"""What the node remembers of the scene, without ROS: a bounded store of keyframes (what the
model sees) and an incremental coloured voxel map (what RViz and the bird's-eye view show).

    frame.py            Frame, one synced RGB-D frame with its pose
    keyframes.py        KeyframeStore
    eviction.py         the "oldest" / "farthest" policies both stores offer
    voxel_keys.py       the packed voxel-key layout every voxel backend shares
    voxel_map.py        VoxelMap: the algorithm, on numpy
    torch_voxel_map.py  TorchVoxelMap: the same on torch tensors, frames through voxel_kernels
    voxel_kernels.py    the Triton kernels that fuse one depth frame into the torch map

Make voxel maps with make_voxel_map(), which picks the backend by device.
"""
from __future__ import annotations

from .frame import Frame
from .keyframes import KeyframeStore
from .torch_voxel_map import TorchVoxelMap
from .voxel_map import VoxelMap

__all__ = ["Frame", "KeyframeStore", "TorchVoxelMap", "VoxelMap", "make_voxel_map"]


def make_voxel_map(voxel_size: float = 0.02, max_voxels: int = 2_000_000, eviction: str = "oldest",
                   max_depth: float | None = None, device: str = "cpu") -> VoxelMap:
    """The voxel map for `device`: "cpu" gives the numpy VoxelMap; "cuda" or "cuda:N" a
    TorchVoxelMap, which fuses camera frames with the Triton kernels where they run and on its
    torch path elsewhere. Any other device is a ValueError."""
    on_cuda = isinstance(device, str) and device.startswith("cuda")
    backend = TorchVoxelMap if on_cuda else VoxelMap
    return backend(voxel_size, max_voxels, eviction, max_depth, device)
