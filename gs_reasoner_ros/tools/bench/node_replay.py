"""The camera of `gs-reasoner bench node`: a process of its own publishing 640x480 RGB-D,
camera_info and the pose on /tf at a fixed rate over DDS, stamped with this machine's wall clock
(as a camera driver does), so the node's stamp-to-fused lag is a real figure.

The frames: a closed camera loop rendered once through the synthetic room, and, when a folder of
3DMatch frames is given, every `real_every`-th frame's colour and depth taken from those real
frames in turn (placed at the loop's pose: real sensor depth, holes and noise through the same
decoding and fusion; the fused geometry of those frames does not line up with the room, which
the intake does not need). The pose moves along the loop, so keyframes keep changing.

Commands on standard input, one a line: `hold` (stay at the current view: no new keyframes),
`move` (go on along the loop), `quit`. Every second it prints `sent N` (frames published so far);
at exit one JSON line with the totals.

    python -m gs_reasoner_ros.tools.bench.node replay --rate 30 [--frames-dir DIR] ...
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--rate", type=float, default=30.0, help="frames per second")
    a("--width", type=int, default=640)
    a("--height", type=int, default=480)
    a("--loop-frames", type=int, default=300, help="distinct views rendered along the closed loop")
    a("--seed", type=int, default=0)
    a("--frames-dir", default="", help="3DMatch frames (the layout of ../shared/data/rgbd_3dmatch); '' = none")
    a("--real-every", type=int, default=10, help="every N-th frame is a 3DMatch frame (when --frames-dir)")


class Camera:
    """The frames to send: the rendered loop and, optionally, real frames mixed in."""

    def __init__(self, args):
        from gs_reasoner_ros.tools.soak import render_loop

        self.K, self.poses, self.colors, self.depths = render_loop(args.loop_frames, args.width, args.height,
                                                                   args.seed)
        self.real = _real_frames(args.frames_dir, args.width, args.height) if args.frames_dir else []
        self.real_every = max(1, int(args.real_every))

    def frame(self, i: int, view: int):
        """(K, pose, colour msg, depth msg) of the i-th frame sent, at loop view `view`."""
        j = view % len(self.poses)
        if self.real and i % self.real_every == self.real_every - 1:
            K, color, depth = self.real[(i // self.real_every) % len(self.real)]
            return K, self.poses[j], color, depth
        return self.K, self.poses[j], self.colors[j], self.depths[j]


def _real_frames(folder: str, width: int, height: int) -> list:
    """3DMatch frames as (K, colour msg, depth msg), resized to width x height."""
    import cv2

    from gs_reasoner_ros.ros import conversions
    from gs_reasoner_ros.ros.replay import CAMERA_FRAME
    from gs_reasoner_ros.scene import load_3dmatch

    if not Path(folder).is_dir():
        raise ValueError(f"--frames-dir {folder} is not a folder")
    scene = load_3dmatch(folder)
    out = []
    for i in range(len(scene)):
        rgb, depth = scene.rgb[i], scene.depth[i]
        K = np.array(scene.intrinsics[i], dtype=np.float64).reshape(3, 3)
        if depth.shape != (height, width):
            K[0] *= width / depth.shape[1]
            K[1] *= height / depth.shape[0]
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
            depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
        out.append((K, conversions.rgb_to_image(np.ascontiguousarray(rgb), 0.0, CAMERA_FRAME),
                    conversions.depth_to_image(depth, 0.0, CAMERA_FRAME)))
    return out


class _Commands:
    """hold / move / quit from standard input, read on a thread of its own."""

    def __init__(self):
        self.hold = False
        self.quit = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            word = line.strip()
            if word in ("hold", "move"):
                self.hold = word == "hold"
            elif word == "quit":
                break
        self.quit.set()  # quit, or the bench closed our input (it exited)


def replay_main(argv: list[str]) -> int:
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from gs_reasoner_ros.ros import conversions, dds
    from gs_reasoner_ros.ros.replay import CAMERA_FRAME, ScenePlayer

    parser = argparse.ArgumentParser(prog="gs-reasoner bench node replay")
    add_arguments(parser)
    args = parser.parse_args(argv)
    dds.use_bundled_fastdds_profile()  # 640x480 frames over shared memory
    camera = Camera(args)
    commands = _Commands()
    signal.signal(signal.SIGINT, lambda *_: commands.quit.set())
    signal.signal(signal.SIGTERM, lambda *_: commands.quit.set())
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("gs_reasoner_bench_camera", context=ctx)
    player = ScenePlayer(node)
    print(f"ready {len(camera.poses)} views, {len(camera.real)} real frames", flush=True)
    period, sent, late, view = 1.0 / args.rate, 0, 0, 0
    t0 = next_t = next_report = time.monotonic()
    while not commands.quit.is_set():
        K, pose, color, depth = camera.frame(sent, view)
        stamp = time.time()
        st = conversions.sec_to_stamp(stamp)
        player.publish_pose(pose, stamp)
        player.info.publish(conversions.make_camera_info(K, args.width, args.height, stamp, CAMERA_FRAME))
        color.header.stamp = depth.header.stamp = st
        player.color.publish(color)
        player.depth.publish(depth)
        sent += 1
        view += 0 if commands.hold else 1
        now = time.monotonic()
        if now >= next_report:
            print(f"sent {sent}", flush=True)
            next_report = now + 1.0
        next_t += period
        if next_t < now - period:  # more than a frame behind: count it, do not burst to catch up
            late += 1
            next_t = now
        commands.quit.wait(max(0.0, next_t - time.monotonic()))
    wall = time.monotonic() - t0
    print(json.dumps({"sent": sent, "late": late, "rate_hz": round(sent / wall, 2) if wall > 0 else 0.0,
                      "real_frames": len(camera.real)}), flush=True)
    node.destroy_node()
    ctx.try_shutdown()
    return 0
