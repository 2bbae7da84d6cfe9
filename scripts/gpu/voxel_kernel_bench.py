#!/usr/bin/env python3
"""Per-frame cost of TorchVoxelMap.integrate_frame on CUDA: Triton kernels against the torch path (issue 5).

Target: <= 0.5 ms per 640x480 frame into a 2 cm map (bench mapping's cuda_ms_per_frame, which
times integrate_frame from a numpy Frame, upload included, synchronised). Frames: the 3DMatch
sample when ../shared is present, else rendered synthetic ones. Prints one JSON line (ms, medians
over every frame of every pass; the first pass creates voxels, later ones merge into them):

  kernel_ms_per_frame          integrate_frame, kernel path, pinned staging uploads, captured
                               CUDA graphs (the default)
  kernel_no_graph_ms_per_frame the same, launching each frame's copies and kernels one by one
  kernel_under_load_ms_per_frame  kernel path while another thread keeps the default stream busy
  kernel_under_load_shared_stream_ms_per_frame  the same with the map on the caller's stream
  kernel_pageable_ms_per_frame the same with plain pageable copies
  torch_ms_per_frame           integrate_frame, the torch path it replaces
  upload_ms, upload_pageable_ms  depth + colour + params to the device alone, synchronised
  kernels_ms, insert_ms, accumulate_ms  the two kernels alone (CUDA events), per --blocks size
  parity_differing_voxels      voxels whose centroid or colour differs from numpy VoxelMap's

    python3 scripts/gpu/voxel_kernel_bench.py                # on the GPU machine
    TRITON_INTERPRET=1 python3 scripts/gpu/voxel_kernel_bench.py --device cpu --stride 8 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, not installed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=5, help="passes over the frames")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--blocks", default="512,1024,2048", help="pixels per program to time the kernels with")
    p.add_argument("--synthetic", type=int, default=8, help="rendered frames when 3DMatch is absent")
    args = p.parse_args(argv)

    import torch
    import triton

    from gs_reasoner_ros.scene_memory import voxel_kernels

    frames, source = load_frames(args.synthetic)
    result = dict(device=torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
                  torch=torch.__version__, triton=triton.__version__, frames=source, n_frames=len(frames),
                  stride=args.stride, repeats=args.repeats)
    result["kernel_ms_per_frame"] = end_to_end(frames, args, kernels=True, pinned=True)
    result["kernel_no_graph_ms_per_frame"] = end_to_end(frames, args, kernels=True, pinned=True, graphs=False)
    if args.device.startswith("cuda"):
        result["kernel_under_load_ms_per_frame"] = under_load(frames, args, own_stream=True)
        result["kernel_under_load_shared_stream_ms_per_frame"] = under_load(frames, args, own_stream=False)
    result["kernel_pageable_ms_per_frame"] = end_to_end(frames, args, kernels=True, pinned=False)
    result["torch_ms_per_frame"] = end_to_end(frames, args, kernels=False, pinned=True)
    result["upload_ms"] = uploads(frames, args, pinned=True)
    result["upload_pageable_ms"] = uploads(frames, args, pinned=False)
    default_block = voxel_kernels.BLOCK
    for block in [int(b) for b in args.blocks.split(",")]:
        voxel_kernels.BLOCK = block
        tag = "" if block == default_block else f"_block{block}"
        for name, ms in kernels_alone(frames, args).items():
            result[f"{name}{tag}"] = ms
    voxel_kernels.BLOCK = default_block
    result.update(parity(frames, args))
    print(json.dumps(result))
    return 0


def load_frames(n_synthetic: int) -> tuple[list, str]:
    from gs_reasoner_ros.tools.bench.common import SHARED_3DMATCH
    from gs_reasoner_ros.scene_memory import Frame

    if SHARED_3DMATCH.is_dir():
        from gs_reasoner_ros.scene import load_3dmatch

        scene, source = load_3dmatch(SHARED_3DMATCH), "3dmatch"
    else:
        from gs_reasoner_ros.synthetic import synthetic_scene

        scene, source = synthetic_scene(seed=0, n_frames=n_synthetic, width=640, height=480)[0], "synthetic"
    return [Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], i / 30)
            for i in range(len(scene))], source


def new_map(args, kernels: bool = True, pinned: bool = True, graphs: bool = True):
    from gs_reasoner_ros.scene_memory import TorchVoxelMap

    vmap = TorchVoxelMap(voxel_size=0.02, device=args.device)
    if vmap._kernels is None and kernels:
        raise SystemExit("the Triton kernels do not run here (no triton, or CPU without TRITON_INTERPRET=1)")
    if not kernels:
        vmap._kernels = None
    vmap.pinned_upload = pinned
    vmap.capture_graphs = graphs
    return vmap


def sync(args) -> None:
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def end_to_end(frames, args, kernels: bool, pinned: bool, graphs: bool = True) -> float:
    """Median ms of integrate_frame (synchronised), as gs-reasoner bench mapping times it."""
    return frame_ms(new_map(args, kernels, pinned, graphs), frames, args, lambda: sync(args))


def frame_ms(vmap, frames, args, wait=None) -> float:
    """Median ms of integrate_frame over args.repeats passes (after a first frame that compiles,
    pins and allocates, then clear()), `wait` called before each clock stop."""
    vmap.integrate_frame(frames[0], args.stride)
    vmap.clear()
    times = []
    for _ in range(args.repeats):
        for frame in frames:
            t0 = time.perf_counter()
            vmap.integrate_frame(frame, args.stride)
            if wait is not None:
                wait()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def under_load(frames, args, own_stream: bool) -> float:
    """end_to_end while another thread keeps the default stream busy with bf16 matmuls, about
    6 ms queued at a time (the model answering a question beside the camera)."""
    import threading

    import torch

    stop = threading.Event()

    def load():
        a = torch.randn(8192, 8192, device=args.device, dtype=torch.bfloat16) / 90.0
        while not stop.is_set():
            for _ in range(4):
                a = torch.tanh(a @ a)
            torch.cuda.current_stream().synchronize()

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        vmap = new_map(args)
        vmap.own_stream = own_stream
        return frame_ms(vmap, frames, args)  # integrate_frame waits for its own work (a device sync would not)
    finally:
        stop.set()
        thread.join()


def uploads(frames, args, pinned: bool) -> float:
    """Median ms to put one frame's depth, colour and params on the device."""
    from gs_reasoner_ros.scene_memory import voxel_kernels

    vmap = new_map(args, True, pinned)
    times = []
    for _ in range(args.repeats + 1):
        for frame in frames:
            sync(args)
            t0 = time.perf_counter()
            vmap._upload("depth", frame.depth)
            vmap._upload("params", voxel_kernels.frame_params(0, frame.pose, 50.0, None))
            vmap._upload("rgb", frame.rgb)
            sync(args)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[len(frames):])  # the first pass pins the buffers


class Marks:
    """Points in the queued work: CUDA events on the GPU, the wall clock on the CPU."""

    def __init__(self, cuda: bool):
        self.cuda, self.points = cuda, []

    def mark(self) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.points.append(event)
        else:
            self.points.append(time.perf_counter())

    def ms(self, i: int, j: int) -> float:
        """Between marks i and j (after a synchronisation on the GPU)."""
        if self.cuda:
            return self.points[i].elapsed_time(self.points[j])
        return (self.points[j] - self.points[i]) * 1e3


def kernels_alone(frames, args) -> dict:
    """Median ms of the two kernels on frames already on the device."""
    from gs_reasoner_ros.scene_memory import voxel_kernels as vk

    vmap = new_map(args)
    vmap.integrate_frame(frames[0], args.stride)
    vmap.clear()
    ins, acc = [], []
    for _ in range(args.repeats):
        for frame in frames:
            setup = vmap._begin_frame(frame, args.stride)
            depth = vmap._upload("depth", frame.depth)
            params = vmap._upload("params", vk.frame_params(vmap._n, frame.pose, 1 / vmap.voxel_size, vmap.max_depth,
                                                            vmap._tick))
            rgb = vmap._upload("rgb", frame.rgb)
            sync(args)
            marks = Marks(args.device.startswith("cuda"))
            marks.mark()
            vk.insert(depth, params, setup, vmap._tkeys, vmap._tslot, vmap._keys, vmap._tpos, vmap._tbits)
            marks.mark()
            vk.accumulate(depth, rgb, params, setup, vmap._tslot, vmap._count, vmap._sum_offset, vmap._sum_rgb,
                          vmap._seen)
            marks.mark()
            vmap._end_frame(params[:2].tolist())  # synchronises
            ins.append(marks.ms(0, 1))
            acc.append(marks.ms(1, 2))
    return dict(kernels_ms=statistics.median(a + b for a, b in zip(ins, acc)), insert_ms=statistics.median(ins),
                accumulate_ms=statistics.median(acc))


def parity(frames, args) -> dict:
    """Voxels (by cell) whose centroid or colour differ between the kernel map and numpy's."""
    from gs_reasoner_ros.scene_memory import VoxelMap

    maps = [VoxelMap(0.02), new_map(args)]
    for vmap in maps:
        for frame in frames:
            vmap.integrate_frame(frame, args.stride)

    def table(vmap):
        pts, cols = vmap.snapshot()
        cells = np.floor(pts.astype(np.float64) / 0.02).astype(np.int64)
        return {tuple(c): (tuple(p), tuple(k)) for c, p, k in zip(cells, pts, cols)}

    a, b = (table(m) for m in maps)
    differing = len(a.keys() ^ b.keys()) + sum(a[k] != b[k] for k in a.keys() & b.keys())
    return dict(parity_voxels=len(a), parity_differing_voxels=differing)


if __name__ == "__main__":
    raise SystemExit(main())
