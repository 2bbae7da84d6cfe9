"""`gs-reasoner export-scene SOURCE OUT`: turn a recording into keyframes in the GS-Reasoner
processed-data layout (or a scene .npz), offline and without a ROS install.

SOURCE is a scene (.npz or processed-data folder) or a rosbag2 (folder, .mcap or .db3), read
with the `rosbags` package: colour and depth (raw Image, or CompressedImage as image_transport
publishes them: JPEG/PNG colour, compressedDepth PNG) and camera_info are paired by nearest header stamp
within a slop, the camera pose comes from /tf and /tf_static at the image stamp, and the
keyframe policy of the node (KeyframeStore) picks the frames, of which at most --frames are
written, chosen uniformly.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gs_reasoner_ros.geometry import check_intrinsics
from gs_reasoner_ros.scene import Scene
from gs_reasoner_ros.scene_memory import Frame, KeyframeStore

DEFAULT_TOPICS = {"color": "/color/image", "depth": "/depth/image", "info": "/color/camera_info"}
# image_transport's names for the compressed plugins, tried when the raw defaults are absent
COMPRESSED_TOPICS = {"color": "/color/image/compressed", "depth": "/depth/image/compressedDepth"}
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
TF_TYPE = "tf2_msgs/msg/TFMessage"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="scene .npz, processed-data folder, or rosbag2 (folder, .mcap, .db3)")
    parser.add_argument("out", help="output folder (processed-data layout), or a file ending in .npz")
    parser.add_argument("--frames", type=int, default=32, help="write at most N keyframes, chosen uniformly (32)")
    parser.add_argument("--all-frames", action="store_true",
                        help="skip the keyframe policy: every synced frame is a candidate")
    parser.add_argument("--color-topic", help=f"colour Image or CompressedImage topic (default "
                        f"{DEFAULT_TOPICS['color']}, then {COMPRESSED_TOPICS['color']}, else the only image "
                        "topic without 'depth' in its name)")
    parser.add_argument("--depth-topic", help=f"depth Image (16UC1 mm or 32FC1 m) or compressedDepth topic "
                        f"(default {DEFAULT_TOPICS['depth']}, then {COMPRESSED_TOPICS['depth']}, else the only "
                        "image topic with 'depth' in its name)")
    parser.add_argument("--info-topic", help=f"CameraInfo topic (default {DEFAULT_TOPICS['info']}, "
                        "else the only CameraInfo topic)")
    parser.add_argument("--world-frame", help="TF frame the poses are expressed in (default: map if the "
                        "bag has it, else the root of the camera's TF tree)")
    parser.add_argument("--slop", type=float, default=0.02, help="max colour/depth stamp difference, s (0.02)")
    parser.add_argument("--min-translation", type=float, default=0.15, help="keyframe after moving this far, m")
    parser.add_argument("--min-rotation", type=float, default=10.0, help="keyframe after turning this much, deg")
    parser.add_argument("--min-interval", type=float, default=0.5, help="never keyframes closer in time, s")
    parser.add_argument("--max-interval", type=float, default=5.0, help="a keyframe at least this often, s")
    parser.add_argument("--align", action="store_true",
                        help="estimate the gravity/wall alignment from the keyframes and store it (axis_align)")
    parser.add_argument("--force", action="store_true", help="write into an OUT folder that already holds frames")


def run(args: argparse.Namespace) -> int:
    try:
        result = export_scene(
            args.source, args.out, frames=args.frames, all_frames=args.all_frames,
            topics=dict(color=args.color_topic, depth=args.depth_topic, info=args.info_topic),
            world_frame=args.world_frame, slop=args.slop, align=args.align, force=args.force,
            policy=dict(min_translation=args.min_translation, min_rotation_deg=args.min_rotation,
                        min_interval_s=args.min_interval, max_interval_s=args.max_interval))
    except (ValueError, FileNotFoundError) as err:
        print(f"export-scene: error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


@dataclass
class ExportResult:
    path: Path
    written: int  # keyframes written
    keyframes: int  # keyframes the policy chose
    candidates: int  # synced, posed frames offered to the policy
    skipped: dict = field(default_factory=dict)  # reason -> count of frames that could not be used
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.written} keyframes (policy chose {self.keyframes} of {self.candidates} "
                 f"synced frames) to {self.path}"]
        lines += [f"  skipped {n} frames: {why}" for why, n in self.skipped.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def export_scene(source, out, frames: int = 32, all_frames: bool = False, topics: dict | None = None,
                 world_frame: str | None = None, slop: float = 0.02, policy: dict | None = None,
                 align: bool = False, force: bool = False) -> ExportResult:
    """Select keyframes from `source` and write them to `out`; see the module docstring."""
    if int(frames) < 1:
        raise ValueError(f"--frames must be positive, got {frames}")
    if not slop >= 0:
        raise ValueError(f"--slop must be >= 0 seconds, got {slop}")
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    _check_output(out, force)
    policy = dict(policy or {})
    if all_frames:
        policy.update(min_translation=0.0, min_rotation_deg=0.0, min_interval_s=0.0, max_interval_s=0.0)
    result = ExportResult(out, 0, 0, 0)
    if _is_bag(source):
        scene = _bag_scene(source, frames, topics or {}, world_frame, slop, policy, result)
    else:
        scene = _scene_keyframes(Scene.load(source), frames, policy, result)
    if align:
        from gs_reasoner_ros.geometry import estimate_alignment

        A, info = estimate_alignment(scene.world_points(), poses=scene.poses, return_info=True)
        scene.axis_align = A
        result.notes.append(f"alignment: {info.message}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        scene.save_npz(out)
    else:
        scene.save_processed(out)
    result.written = len(scene)
    return result


def _check_output(out: Path, force: bool) -> None:
    if out.suffix == ".npz":
        if out.exists() and not force:
            raise ValueError(f"{out} exists (use --force to overwrite)")
    elif out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder")
        if (out / "color").is_dir() and any((out / "color").iterdir()) and not force:
            raise ValueError(f"{out} already holds frames (use --force to write into it)")


def _is_bag(path: Path) -> bool:
    return path.suffix in (".mcap", ".db3") or (path.is_dir() and (path / "metadata.yaml").exists())


def _scene_keyframes(scene: Scene, count: int, policy: dict, result: ExportResult) -> Scene:
    """Run the keyframe policy over a loaded scene; frames without stamps are taken 1 s apart."""
    stamps = scene.stamps if scene.stamps is not None else np.arange(len(scene), dtype=np.float64)
    store = KeyframeStore(max_keyframes=len(scene), **policy)
    for i in range(len(scene)):
        store.offer(Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], stamps[i]))
    result.candidates, result.keyframes = len(scene), len(store)
    return store.to_scene(count, scene.axis_align)


# ---- rosbag2 ---------------------------------------------------------------------------

@dataclass
class _Pair:
    stamp: float  # colour header stamp, s
    color_index: int  # position in the colour topic
    depth_index: int
    pose: np.ndarray | None = None
    K: np.ndarray | None = None
    info: object = None  # the nearest CameraInfo message


def _bag_scene(path: Path, count: int, topics: dict, world_frame: str | None, slop: float,
               policy: dict, result: ExportResult) -> Scene:
    """Keyframes of a bag in two passes: first TF, camera info and image stamps (the policy only
    needs poses and stamps, so it runs before any image is kept), then only the chosen images."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from gs_reasoner_ros.pipeline.tf_tree import TfBuffer, TfError

    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = _pick_topics(reader.connections, topics)
        tf = TfBuffer(cache_time_s=1e12)  # a recording: keep the whole history
        parents: dict[str, str] = {}  # child -> parent, to find the root of the camera's tree
        infos, stamps, frames_of = [], {"color": [], "depth": []}, {}
        wanted = [c for c in reader.connections if c.topic in ("/tf", "/tf_static") and c.msgtype == TF_TYPE]
        wanted += [conns["info"], conns["color"], conns["depth"]]
        bad_tf = 0
        for conn, _, raw in reader.messages(connections=wanted):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype == TF_TYPE:
                bad_tf += _add_tf(tf, parents, msg, static=conn.topic == "/tf_static")
            elif conn is conns["info"]:
                infos.append((_sec(msg.header.stamp), msg))
            else:
                kind = "color" if conn is conns["color"] else "depth"
                stamps[kind].append(_sec(msg.header.stamp))
                frames_of.setdefault(kind, msg.header.frame_id)
        if bad_tf:
            result.skipped["invalid TF transforms"] = bad_tf
        if not infos:
            raise ValueError(f"{path}: no CameraInfo messages on {conns['info'].topic}")
        infos.sort(key=lambda s: s[0])
        info_stamps = np.array([s[0] for s in infos])
        pairs = _pair(stamps["color"], stamps["depth"], slop)
        if len(stamps["color"]) > len(pairs):
            result.skipped["colour without a depth image within the slop"] = len(stamps["color"]) - len(pairs)
        camera = frames_of.get("color") or infos[0][1].header.frame_id
        world = _world_frame(parents, camera, world_frame, result)
        store = KeyframeStore(max_keyframes=max(len(pairs), 1), **policy)
        tiny = (np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.float32))
        chosen: dict[int, _Pair] = {}
        for pair in pairs:
            try:
                pair.pose = tf.lookup(world, camera, pair.stamp)
            except TfError as err:
                _skip(result, f"no TF {world} <- {camera} at the image stamp", err)
                continue
            pair.info = infos[int(_nearest(info_stamps, np.array([pair.stamp]))[0])][1]
            try:
                pair.K = check_intrinsics(np.asarray(pair.info.k, dtype=np.float64).reshape(3, 3))
            except ValueError as err:
                _skip(result, "invalid camera_info", err)
                continue
            result.candidates += 1
            # The policy looks only at stamps and poses: a 1-pixel stand-in keeps memory flat.
            if store.offer(Frame(*tiny, np.eye(3), pair.pose, pair.stamp)):
                chosen[len(store) - 1] = pair
        result.keyframes = len(store)
        if not chosen:
            raise ValueError(f"{path}: no synced colour+depth frame with a camera pose "
                             f"({len(stamps['color'])} colour, {len(stamps['depth'])} depth images, "
                             f"{len(pairs)} pairs)")
        picks = [chosen[i] for i in np.linspace(0, len(chosen) - 1, min(count, len(chosen))).astype(int)]
        return _decode_pairs(reader, conns, picks)


def _decode_pairs(reader, conns, picks: list[_Pair]) -> Scene:
    """Second pass: decode the chosen colour and depth images into a Scene."""
    from gs_reasoner_ros.pipeline.images import decode_color, decode_depth

    want = {"color": {p.color_index: p for p in picks}, "depth": {p.depth_index: p for p in picks}}
    images: dict[int, dict] = {id(p): {} for p in picks}
    seen = {"color": 0, "depth": 0}
    for conn, _, raw in reader.messages(connections=[conns["color"], conns["depth"]]):
        kind = "color" if conn is conns["color"] else "depth"
        index = seen[kind]
        seen[kind] += 1
        pair = want[kind].get(index)
        if pair is not None:
            msg = reader.deserialize(raw, conn.msgtype)
            images[id(pair)][kind] = decode_color(msg) if kind == "color" else decode_depth(msg)
    rgb, depth, K, poses, stamps = [], [], [], [], []
    for p in picks:
        im = images[id(p)]
        h, w = im["depth"].shape
        info = p.info
        k = p.K.copy()
        if (int(info.width), int(info.height)) not in ((w, h), (0, 0)):  # intrinsics of the depth image
            k[0] *= w / int(info.width)
            k[1] *= h / int(info.height)
        rgb.append(im["color"])
        depth.append(im["depth"])
        K.append(k)
        poses.append(p.pose)
        stamps.append(p.stamp)
    if len({r.shape for r in rgb}) > 1 or len({d.shape for d in depth}) > 1:
        raise ValueError("image sizes change within the bag; export one camera setting at a time")
    return Scene(np.stack(rgb), np.stack(depth), np.stack(K), np.stack(poses), stamps=np.array(stamps))


def _pick_topics(connections, topics: dict) -> dict:
    """The colour, depth and camera-info connections: as given, else the defaults, else the only
    candidate by type and name."""
    by_topic = {c.topic: c for c in connections}
    images = [c for c in connections if c.msgtype in IMAGE_TYPES]
    guesses = {"color": [c for c in images if "depth" not in c.topic.lower()],
               "depth": [c for c in images if "depth" in c.topic.lower()],
               "info": [c for c in connections if c.msgtype == INFO_TYPE]}
    available = ", ".join(f"{c.topic} ({c.msgtype})" for c in connections) or "none"
    picked = {}
    for kind, msgtypes in (("color", IMAGE_TYPES), ("depth", IMAGE_TYPES), ("info", (INFO_TYPE,))):
        name = topics.get(kind)
        if name:
            conn = by_topic.get(name)
            if conn is None:
                raise ValueError(f"topic {name} is not in the bag; it has: {available}")
        elif DEFAULT_TOPICS[kind] in by_topic:
            conn = by_topic[DEFAULT_TOPICS[kind]]
        elif COMPRESSED_TOPICS.get(kind) in by_topic:
            conn = by_topic[COMPRESSED_TOPICS[kind]]
        elif len(guesses[kind]) == 1:
            conn = guesses[kind][0]
        else:
            raise ValueError(f"cannot tell which topic is the {kind} stream; pass --{kind}-topic "
                             f"(the bag has: {available})")
        if conn.msgtype not in msgtypes:
            raise ValueError(f"topic {conn.topic} carries {conn.msgtype}, expected {' or '.join(msgtypes)}")
        picked[kind] = conn
    return picked


def _pair(color: list, depth: list, slop: float) -> list[_Pair]:
    """Mutual nearest colour/depth stamps no more than `slop` apart, in colour order."""
    if not color or not depth:
        return []
    c, d = np.asarray(color), np.asarray(depth)
    d_order = np.argsort(d, kind="stable")
    c_order = np.argsort(c, kind="stable")
    near_d = _nearest(d[d_order], c)
    near_c = _nearest(c[c_order], d)
    pairs = []
    for i in np.argsort(c, kind="stable"):
        j = d_order[near_d[i]]
        if c_order[near_c[j]] == i and abs(c[i] - d[j]) <= slop:
            pairs.append(_Pair(float(c[i]), int(i), int(j)))
    return pairs


def _nearest(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index into `sorted_values` of the nearest value to each query."""
    right = np.clip(np.searchsorted(sorted_values, queries), 1, max(len(sorted_values) - 1, 1))
    left = right - 1
    if len(sorted_values) == 1:
        return np.zeros(len(queries), dtype=int)
    return np.where(np.abs(queries - sorted_values[left]) <= np.abs(sorted_values[right] - queries), left, right)


def _add_tf(tf, parents: dict, msg, static: bool) -> int:
    """Add a TFMessage's transforms to the buffer; returns how many were invalid and dropped."""
    bad = 0
    for ts in msg.transforms:
        tr, r = ts.transform.translation, ts.transform.rotation
        try:
            tf.set_transform(ts.header.frame_id, ts.child_frame_id, _sec(ts.header.stamp),
                             [tr.x, tr.y, tr.z], [r.x, r.y, r.z, r.w], static=static)
        except ValueError:
            bad += 1
            continue
        parents[ts.child_frame_id] = ts.header.frame_id
    return bad


def _world_frame(parents: dict, camera: str, requested: str | None, result: ExportResult) -> str:
    """The frame to express poses in: as requested, else map, else the root above the camera."""
    frames = set(parents) | set(parents.values())
    if camera not in frames:
        raise ValueError(f"camera frame {camera!r} is not in the bag's TF tree (frames: {sorted(frames) or 'none'})")
    if requested:
        if requested not in frames:
            raise ValueError(f"--world-frame {requested!r} is not in the bag's TF tree (frames: {sorted(frames)})")
        return requested
    if "map" in frames:
        return "map"
    root, hops = camera, 0
    while root in parents and hops < 64:  # 64: a longer chain is a loop
        root, hops = parents[root], hops + 1
    result.notes.append(f"no 'map' frame: poses are in {root!r}, the root of the camera's TF tree")
    return root


def _skip(result: ExportResult, why: str, err: Exception) -> None:
    if why not in result.skipped:
        result.notes.append(f"first '{why}': {err}")
    result.skipped[why] = result.skipped.get(why, 0) + 1


def _sec(stamp) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9
