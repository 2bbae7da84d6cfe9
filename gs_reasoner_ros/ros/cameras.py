"""The node's camera inputs: one to four RGB-D cameras, each raw or compressed, each with its own
synchronizer, all feeding the one intake (one voxel map, one keyframe store).

A camera is a topic prefix (the `cameras` parameter; "" = the plain names) and a transport
(`camera_transports`, one per camera, same order):
- raw: sensor_msgs/Image on PREFIX/color/image and PREFIX/depth/image;
- compressed: sensor_msgs/CompressedImage on PREFIX/color/image/compressed (JPEG/PNG) and
  PREFIX/depth/image/compressedDepth (image_transport's names);
and in both cases sensor_msgs/CameraInfo on PREFIX/color/camera_info. The synced set goes to
the intake thread undecoded (decoding, compressed or not, happens there, off the executor), tagged
with its camera, whose frames and keyframes then carry that name. Each camera's pose is looked
up for the frame_id of its own camera_info, at its own stamps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from gs_reasoner_ros.ros import qos
from gs_reasoner_ros.ros.sync import message_filters

MAX_CAMERAS = 4  # as nvblox: more is rarely one robot's worth of RGB-D, and each costs a synchronizer
TRANSPORTS = ("raw", "compressed")
_PREFIX = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class Camera:
    """One camera: its name (the prefix as configured) and the topics it is read from."""

    prefix: str
    transport: str

    def _topic(self, name: str) -> str:
        return f"{self.prefix.rstrip('/')}/{name}" if self.prefix else name

    @property
    def color(self) -> str:
        return self._topic("color/image/compressed" if self.transport == "compressed" else "color/image")

    @property
    def depth(self) -> str:
        return self._topic("depth/image/compressedDepth" if self.transport == "compressed" else "depth/image")

    @property
    def info(self) -> str:
        return self._topic("color/camera_info")

    @property
    def image_type(self):
        return CompressedImage if self.transport == "compressed" else Image

    def input_name(self, kind: str) -> str:
        """Health counter / timeline name of one of its inputs (color, depth, camera_info, synced)."""
        return f"{self.prefix}/{kind}" if self.prefix else kind


def camera_list(prefixes, transports, resolve=lambda topic: topic) -> list[Camera]:
    """The cameras of the `cameras` and `camera_transports` parameters; ValueError saying what is
    wrong. `resolve(topic)` gives a topic's full name (the node's resolve_topic_name), so two
    prefixes that name the same topics (`head` and `/head` at the root) are caught."""
    prefixes, transports = list(prefixes), list(transports)
    if not 1 <= len(prefixes) <= MAX_CAMERAS:
        raise ValueError(f"cameras lists {len(prefixes)} cameras; between 1 and {MAX_CAMERAS} are supported")
    if len(transports) != len(prefixes):
        raise ValueError(f"cameras lists {len(prefixes)} cameras ({prefixes}) but camera_transports has "
                         f"{len(transports)} entries ({transports}); give one transport per camera, in order")
    cameras = []
    for prefix, transport in zip(prefixes, transports):
        if prefix and not _PREFIX.match(prefix):
            raise ValueError(f"camera prefix {prefix!r} is not a valid topic namespace")
        if transport not in TRANSPORTS:
            raise ValueError(f"camera {prefix!r}: transport {transport!r} must be one of {', '.join(TRANSPORTS)}")
        cameras.append(Camera(prefix.rstrip("/"), transport))
    seen: dict[str, str] = {}
    for cam in cameras:
        for topic in (cam.color, cam.depth, cam.info):
            full = resolve(topic)
            if full in seen:
                raise ValueError(f"cameras {seen[full]!r} and {cam.prefix!r} both read {full}; "
                                 "each camera needs topics of its own")
            seen[full] = cam.prefix
    return cameras


def configured_cameras(node, p) -> list[Camera]:
    """The node's cameras from its parameters `p` (ValueError when they are inconsistent)."""
    return camera_list(p.cameras, p.camera_transports, node.resolve_topic_name)


class CameraInputs:
    """Subscriptions and a synchronizer per camera. Every message goes to `on_input(name, msg)`
    before its synchronizer sees it; every synced set to `on_frame(color, depth, info, camera)`.
    Looks like one synchronizer to the node (drop_after, dropped) and lists its subscription
    filters in `filters` (each with `.sub`)."""

    def __init__(self, node, cameras: list[Camera], p, callback_group, on_input, on_frame):
        mf = message_filters()
        profile = qos.input_qos(p.input_qos)
        self.cameras, self.filters, self.syncs = list(cameras), [], []
        self._health = node.health
        for cam in self.cameras:
            inputs = [mf.Subscriber(node, cam.image_type, cam.color, qos_profile=profile, callback_group=callback_group),
                      mf.Subscriber(node, cam.image_type, cam.depth, qos_profile=profile, callback_group=callback_group),
                      mf.Subscriber(node, CameraInfo, cam.info, qos_profile=profile, callback_group=callback_group)]
            for f, kind in zip(inputs, ("color", "depth", "camera_info")):
                f.registerCallback(self._input, cam, kind, on_input)  # before the synchronizer
            sync = mf.ApproximateTimeSynchronizer(inputs, p.sync_queue_size, p.sync_slop_s)
            sync.registerCallback(self._synced, cam, on_frame)
            self.filters += inputs
            self.syncs.append(sync)
        self._node = node

    def _input(self, msg, cam: Camera, kind: str, on_input) -> None:
        if cam.prefix:  # per camera (its own timeline too) and, for /diagnostics, all together
            self._health.count(kind)
        on_input(cam.input_name(kind), msg)

    def _synced(self, color, depth, info, cam: Camera, on_frame) -> None:
        if cam.prefix:  # the node counts all cameras' sets together as "synced"
            self._health.count(cam.input_name("synced"))
        on_frame(color, depth, info, cam.prefix)

    def drop_after(self, cutoff: float) -> None:
        """Forget queued messages of the old timeline in every synchronizer (the system
        message_filters cannot drop part of a queue: it clears them)."""
        for sync in self.syncs:
            if hasattr(sync, "drop_after"):
                sync.drop_after(cutoff)
                continue
            lock, queues = getattr(sync, "lock", None), getattr(sync, "queues", None)
            if lock is not None and queues is not None:
                with lock:
                    for q in queues:
                        q.clear()

    @property
    def dropped(self):
        counts = [getattr(s, "dropped", None) for s in self.syncs]
        return "n/a" if None in counts else sum(counts)

    def describe(self) -> str:
        """For the log: every camera's resolved topics and transport."""
        resolve = self._node.resolve_topic_name
        return "; ".join(f"camera {c.prefix or '(default)'} [{c.transport}]: {resolve(c.color)}, {resolve(c.depth)}, "
                         f"{resolve(c.info)}" for c in self.cameras)
