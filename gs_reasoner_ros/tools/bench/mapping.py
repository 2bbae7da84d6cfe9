"""`gs-reasoner bench mapping`: voxel-map integration per frame and intake under a busy model
call (see gs_reasoner_ros.tools.bench)."""
from __future__ import annotations

import argparse
import contextlib
import queue
import statistics
import threading
import time

from gs_reasoner_ros.tools.bench.common import SHARED_3DMATCH, progress, sync

MAPPING_KEYS = ("cpu_ms_per_frame", "cuda_ms_per_frame")


def bench_mapping(args: argparse.Namespace) -> dict:
    """Voxel-map integration time per frame (CPU, and CUDA when the map supports it) and intake
    rate under a concurrent busy model call."""
    import torch

    n_synth = args.frames or (2 if args.tiny else 8)
    duration = args.duration or (1.0 if args.tiny else 5.0)
    if n_synth < 1 or args.repeats < 1 or duration <= 0:
        raise ValueError("--frames and --repeats must be >= 1 and --duration > 0")
    try:
        rates = [float(r) for r in args.rates.split(",") if r]
    except ValueError:
        raise ValueError(f"--rates must be comma-separated numbers, got {args.rates!r}") from None
    if not rates or min(rates) <= 0:
        raise ValueError(f"--rates must be positive numbers, got {args.rates!r}")

    sets = _mapping_frames(n_synth)
    result: dict = {"frame_sets": {name: len(frames) for name, frames in sets.items()}}
    all_frames = [f for frames in sets.values() for f in frames]
    for name, frames in sets.items():
        result[f"cpu_ms_per_frame_{name}"] = _integration_ms(frames, "cpu", args.repeats)
    result["cpu_ms_per_frame"] = _integration_ms(all_frames, "cpu", args.repeats)
    result["cuda_ms_per_frame"] = None
    if torch.cuda.is_available():
        try:
            result["cuda_ms_per_frame"] = _integration_ms(all_frames, "cuda", args.repeats)
        except ValueError as err:  # the map has no CUDA backend (yet)
            result["cuda_note"] = str(err)
    for rate in rates:
        stats = _intake(all_frames, rate, duration)
        tag = f"{rate:g}hz"
        result.update({f"intake_{tag}_{k}": v for k, v in stats.items()})
    return result


def _mapping_frames(n_synth: int) -> dict:
    """640x480 frames: the 3DMatch sample when ../shared is present, and rendered synthetic ones."""
    from gs_reasoner_ros.scene_memory import Frame
    from gs_reasoner_ros.synthetic import synthetic_scene

    def frames_of(scene, stamp0=0.0):
        return [Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], stamp0 + i / 30)
                for i in range(len(scene))]

    sets = {}
    if SHARED_3DMATCH.is_dir():
        from gs_reasoner_ros.scene import load_3dmatch

        sets["3dmatch"] = frames_of(load_3dmatch(SHARED_3DMATCH))
    else:
        progress(f"{SHARED_3DMATCH} absent: synthetic frames only")
    scene, _ = synthetic_scene(seed=0, n_frames=n_synth, width=640, height=480)
    sets["synthetic"] = frames_of(scene)
    return sets


def _integration_ms(frames: list, device: str, repeats: int) -> float:
    """Median ms to integrate one frame into a 2 cm map; the first pass inserts new voxels,
    later passes merge into existing ones (a robot revisiting the room)."""
    from gs_reasoner_ros.scene_memory import make_voxel_map

    vmap = make_voxel_map(voxel_size=0.02, device=device)
    vmap.integrate_frame(frames[0])  # allocator and ray-table warm-up
    vmap.clear()
    times = []
    for _ in range(repeats):
        for frame in frames:
            t0 = time.perf_counter()
            vmap.integrate_frame(frame)
            if device == "cuda":
                sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _busy_model_call(stop: threading.Event) -> None:
    """Stand-in for a query: float32 matmuls (GIL released inside) with Python glue between."""
    import torch

    a = torch.randn(512, 512)
    while not stop.is_set():
        for _ in range(8):
            a = torch.tanh(a @ a.T / 512)
        sum(range(2000))  # the decode loop's Python share, holding the GIL


def _intake(frames: list, rate_hz: float, duration_s: float) -> dict:
    """Frames arrive at `rate_hz` into a queue as deep as the node's intake queue (the
    intake_queue_size default) that drops the oldest when full, as the node does; one thread
    integrates them into the map and offers them to the keyframe store while another runs a
    busy model call."""
    from gs_reasoner_ros.pipeline.intake import DEFAULT_QUEUE_SIZE
    from gs_reasoner_ros.scene_memory import Frame, KeyframeStore, make_voxel_map

    vmap, keyframes = make_voxel_map(voxel_size=0.02), KeyframeStore()
    inbox: queue.Queue = queue.Queue(maxsize=DEFAULT_QUEUE_SIZE)
    stop_busy, done = threading.Event(), threading.Event()
    counts = dict(sent=0, dropped=0, integrated=0)
    lat: list[float] = []

    def consumer():
        while not (done.is_set() and inbox.empty()):
            try:
                sent_at, frame = inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            vmap.integrate_frame(frame)
            keyframes.offer(frame)
            counts["integrated"] += 1
            lat.append((time.perf_counter() - sent_at) * 1e3)

    busy = threading.Thread(target=_busy_model_call, args=(stop_busy,), daemon=True)
    worker = threading.Thread(target=consumer, daemon=True)
    busy.start()
    worker.start()
    period, t0 = 1.0 / rate_hz, time.perf_counter()
    n = int(duration_s * rate_hz)
    for i in range(n):
        delay = t0 + i * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        src = frames[i % len(frames)]
        frame = Frame(src.rgb, src.depth, src.K, src.pose, i * period)
        while True:
            try:
                inbox.put_nowait((time.perf_counter(), frame))
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    inbox.get_nowait()
                    counts["dropped"] += 1
        counts["sent"] += 1
    done.set()
    worker.join()
    elapsed = time.perf_counter() - t0
    stop_busy.set()
    busy.join()
    return dict(sent=counts["sent"], dropped=counts["dropped"], integrated=counts["integrated"],
                rate_hz=counts["integrated"] / elapsed,
                latency_ms_median=statistics.median(lat) if lat else None)
