"""`gs-reasoner replay BAG`: play a recorded rosbag2 (sqlite3 or mcap, read with `rosbags`) into
the running node, as the robot's drivers published it.

Played: every camera topic (sensor_msgs/Image, CompressedImage, CameraInfo), /tf and /tf_static,
under their recorded names (after --remap / --namespace), and /clock at the recorded time (for a
node with use_sim_time). Other topics are left out. Before playing, the bag is checked (a colour
and a depth image topic, camera_info and TF are required) and the player waits, bounded by
--wait, until the node's subscriptions have matched its publishers, so nothing is lost to
discovery. /tf_static is published transient-local and as one growing message of every static
transform, as tf2's static broadcaster does, so a node that starts later still gets it.

Pacing: recorded speed times --rate, or --fast: as fast as the node fuses, by the node's
/diagnostics (integrated + dropped frames), at most --window frames ahead of it.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
TF_TYPE = "tf2_msgs/msg/TFMessage"
TF_TOPICS = ("/tf", "/tf_static")
# The node's /diagnostics figures of frames it is done with, fused or not.
DONE_KEYS = ("integrated_total", "tf_failures_total", "rejected_total", "intake_dropped_total")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 folder, .mcap or .db3")
    parser.add_argument("--node", help="the node to pace by and wait for (default NAMESPACE/gs_reasoner)")
    parser.add_argument("--namespace", default="", help="put the camera topics under this namespace "
                        "(the node's, e.g. /robot1); TF and /clock stay global")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD:=NEW",
                        help="publish topic OLD (or topics under the namespace OLD) as NEW; repeatable")
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor of the recorded timing (1.0)")
    parser.add_argument("--fast", action="store_true", help="as fast as the node fuses (paced by its /diagnostics)")
    parser.add_argument("--window", type=int, default=2, help="--fast: frames played ahead of the node (2)")
    parser.add_argument("--wait", type=float, default=20.0, help="seconds to wait for the node's subscriptions (20)")
    parser.add_argument("--no-clock", action="store_true", help="do not publish /clock")


def run(args: argparse.Namespace) -> int:
    try:
        plan = read_plan(args.bag, parse_remaps(args.remap, args.namespace))
        if not args.rate > 0:
            raise ValueError(f"--rate must be positive, got {args.rate}")
        node = args.node or f"{args.namespace.rstrip('/')}/gs_reasoner"
        result = play(plan, node if node.startswith("/") else "/" + node, rate=args.rate, fast=args.fast,
                      window=max(1, args.window), wait_s=args.wait, clock=not args.no_clock)
    except (ValueError, FileNotFoundError, TimeoutError) as err:
        print(f"replay: error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


# ---- the bag (ROS-free) ---------------------------------------------------------------

@dataclass
class Plan:
    """What to play: the bag and each played connection's output topic."""

    path: Path
    topics: dict  # recorded topic -> published topic
    types: dict  # recorded topic -> msgtype
    frames: int  # depth images (frames) in the bag
    notes: list = field(default_factory=list)


def parse_remaps(remaps, namespace: str = "") -> list[tuple[str, str]]:
    """`OLD:=NEW` strings (and a namespace for every camera topic) -> [(old, new)]."""
    out = []
    for item in remaps:
        old, sep, new = item.partition(":=")
        if not sep or not old.startswith("/") or not new.startswith("/"):
            raise ValueError(f"--remap {item!r}: expected /OLD:=/NEW (absolute names)")
        out.append((old.rstrip("/"), new.rstrip("/")))
    if namespace:
        if not namespace.startswith("/"):
            raise ValueError(f"--namespace {namespace!r} must be absolute (/robot1)")
        out.append(("", namespace.rstrip("/")))  # "" matches every camera topic: a prefix
    return out


def remapped(topic: str, remaps: list[tuple[str, str]]) -> str:
    """`topic` after the first remap whose OLD is it or a namespace above it."""
    if topic in TF_TOPICS:
        return topic
    for old, new in remaps:
        if topic == old or topic.startswith(old + "/"):
            return new + topic[len(old):]
    return topic


def read_plan(path, remaps: list[tuple[str, str]]) -> Plan:
    """Check the bag and choose its topics; ValueError naming what is missing."""
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    with AnyReader([path]) as reader:
        conns = reader.connections
        have = ", ".join(sorted(f"{c.topic} ({c.msgtype})" for c in conns)) or "nothing"
        images = [c for c in conns if c.msgtype in IMAGE_TYPES]
        depth = [c for c in images if "depth" in c.topic.lower()]
        color = [c for c in images if "depth" not in c.topic.lower()]
        infos = [c for c in conns if c.msgtype == INFO_TYPE]
        tf = [c for c in conns if c.topic in TF_TOPICS and c.msgtype == TF_TYPE]
        for what, found in (("colour image", color), ("depth image", depth), ("CameraInfo", infos),
                            ("TF (/tf or /tf_static)", tf)):
            if not found:
                raise ValueError(f"{path}: no {what} topic, so the node could not fuse it (the bag has: {have})")
        if not any(c.msgcount for c in tf):
            raise ValueError(f"{path}: its TF topics hold no messages: no camera pose could be found")
        played = color + depth + infos + tf
        frames = sum(c.msgcount for c in depth)
    topics = {c.topic: remapped(c.topic, remaps) for c in played}
    return Plan(path, topics, {c.topic: c.msgtype for c in played}, frames)


# ---- playing (ROS) -------------------------------------------------------------------------

@dataclass
class Result:
    played: int = 0  # messages
    frames: int = 0  # depth images
    fused: int = 0  # frames the node finished with meanwhile (--fast)
    seconds: float = 0.0
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"played {self.played} messages ({self.frames} frames) in {self.seconds:.1f} s"
                 + (f"; the node finished {self.fused} frames" if self.fused else "")]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _msg_class(msgtype: str):
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def play(plan: Plan, node_name: str, rate: float = 1.0, fast: bool = False, window: int = 2,
         wait_s: float = 20.0, clock: bool = True) -> Result:
    """Publish the bag's chosen topics into the running node `node_name`; see the module docstring."""
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from tf2_msgs.msg import TFMessage

    from gs_reasoner_ros.ros import qos
    from gs_reasoner_ros.ros.harness import Probe
    from gs_reasoner_ros.ros.replay import CAMERA_QOS, ClockPublisher

    probe = Probe(name="gs_reasoner_replay", target=node_name, background=True)
    try:
        pubs = {t: probe.node.create_publisher(_msg_class(plan.types[t]), out,
                                               qos.TF_STATIC if t == "/tf_static" else qos.TF if t == "/tf" else CAMERA_QOS)
                for t, out in plan.topics.items()}
        clock_pub = ClockPublisher(probe.node, active=clock)
        result = Result()
        _wait_for_node(probe, pubs, plan, wait_s, fast, result)
        statics: dict = {}  # child frame -> TransformStamped: the static broadcaster's set
        pace = _Pacer(probe, rate, fast, window)
        t0 = time.monotonic()
        with AnyReader([plan.path]) as reader:
            wanted = [c for c in reader.connections if c.topic in plan.topics]
            for conn, log_ns, raw in reader.messages(connections=wanted):
                is_depth = conn.msgtype in IMAGE_TYPES and "depth" in conn.topic.lower()
                pace.before(log_ns, is_depth)
                clock_pub.publish(log_ns * 1e-9)
                if conn.topic == "/tf_static":
                    for ts in deserialize_message(bytes(raw), TFMessage).transforms:
                        statics[ts.child_frame_id] = ts
                    pubs[conn.topic].publish(TFMessage(transforms=list(statics.values())))
                else:
                    pubs[conn.topic].publish(bytes(raw))
                result.played += 1
                result.frames += is_depth
        result.fused = pace.finish(result.frames)
        result.seconds = time.monotonic() - t0
        result.notes += pace.notes
        return result
    finally:
        probe.close()


def _wait_for_node(probe, pubs: dict, plan: Plan, wait_s: float, fast: bool, result: Result) -> None:
    """Until every camera publisher has a subscriber (bounded); the node's /diagnostics for --fast."""
    cameras = {t: p for t, p in pubs.items() if t not in TF_TOPICS}
    probe.spin_until(lambda: all(p.get_subscription_count() > 0 for p in cameras.values()), wait_s)
    unmatched = [plan.topics[t] for t, p in cameras.items() if p.get_subscription_count() == 0]
    if len(unmatched) == len(cameras):
        raise TimeoutError(f"nothing subscribes to the bag's camera topics ({', '.join(sorted(plan.topics.values()))}) "
                           f"after {wait_s:g} s: is {probe.target} running, in that namespace? (--namespace, --remap)")
    if unmatched:
        result.notes.append(f"nobody subscribes to {', '.join(sorted(unmatched))}; played anyway")
    if fast and not probe.spin_until(lambda: probe.diag(), wait_s):
        raise TimeoutError(f"--fast: no /diagnostics from {probe.target} within {wait_s:g} s")
    time.sleep(0.5)  # our side sees a match before the reader's side does (ScenePlayer's settle)


class _Pacer:
    """Recorded timing (times rate), or --fast: at most `window` frames ahead of the node."""

    FRAME_TIMEOUT_S = 5.0  # a frame the node never reports (unsynced, lost) must not stall the replay

    def __init__(self, probe, rate: float, fast: bool, window: int):
        self.probe, self.rate, self.fast, self.window = probe, rate, fast, window
        self.first_ns, self.t0 = None, time.monotonic()
        self.base = self._done() if fast else 0
        self.sent, self.notes = 0, []

    def _done(self) -> int:
        return int(sum(self.probe.diag_value(k) for k in DONE_KEYS))

    def before(self, log_ns: int, is_frame: bool) -> None:
        if self.first_ns is None:
            self.first_ns = log_ns
        if not self.fast:
            delay = (log_ns - self.first_ns) * 1e-9 / self.rate - (time.monotonic() - self.t0)
            if delay > 0:
                time.sleep(delay)
        elif is_frame:
            target = self.base + self.sent - self.window
            if not self.probe.spin_until(lambda: self._done() >= target, self.FRAME_TIMEOUT_S):
                self.notes.append(f"the node fell {target - self._done()} frames behind for "
                                  f"{self.FRAME_TIMEOUT_S:g} s; went on")
            self.sent += 1

    def finish(self, frames: int) -> int:
        """--fast: wait (bounded) until the node is done with every frame; how many it finished."""
        if not self.fast:
            return 0
        self.probe.spin_until(lambda: self._done() >= self.base + frames, self.FRAME_TIMEOUT_S)
        return self._done() - self.base
