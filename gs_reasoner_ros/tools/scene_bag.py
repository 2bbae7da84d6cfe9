"""Write a Scene as a rosbag2 (sqlite3 or mcap) with `rosbags`, as a robot's drivers would have
recorded it: colour, depth and camera_info of one camera (raw Images, or CompressedImages as
image_transport's compressed plugins publish them), the body pose on /tf and the camera mount on
/tf_static. ROS-free; for tests of `export-scene` and `replay`, and for making small bags.

Layout: colour at each stamp, depth `depth_delay` later, camera_info; world -> base_link sampled
50 ms either side of each image (moving linearly through the true pose, so the pose at the image
stamp must be interpolated); base_link -> the optical frame once on /tf_static.
"""
from __future__ import annotations

import numpy as np

from gs_reasoner_ros import geometry as g
from gs_reasoner_ros.pipeline.images import encode_color, encode_depth

# camera_link -> optical: x right, y down, z forward from a z-up, x-forward body
OPTICAL = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
MOUNT = g.make_transform([0.1, 0.0, 0.3], [0, 0, 0, 1]) @ OPTICAL  # base_link -> camera optical frame
CAMERA_FRAME = "camera_optical"


def _types():
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    return ts, ts.types


def header(T, stamp: float, frame: str):
    sec = int(np.floor(stamp))
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((stamp - sec) * 1e9))),
                                    frame_id=frame)


def transform(T, parent: str, child: str, stamp: float, M: np.ndarray):
    q = g.quat_from_matrix(M[:3, :3])
    return T["geometry_msgs/msg/TransformStamped"](
        header=header(T, stamp, parent), child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=M[0, 3], y=M[1, 3], z=M[2, 3]),
            rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))


def image(T, stamp: float, frame: str, array: np.ndarray, encoding: str):
    h = array.shape[0]
    data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
    return T["sensor_msgs/msg/Image"](header=header(T, stamp, frame), height=h, width=array.shape[1],
                                      encoding=encoding, is_bigendian=0, step=len(data) // h, data=data)


def compressed(T, stamp: float, frame: str, fmt: str, data: bytes):
    return T["sensor_msgs/msg/CompressedImage"](header=header(T, stamp, frame), format=fmt,
                                                data=np.frombuffer(data, np.uint8))


def camera_info(T, stamp: float, frame: str, K: np.ndarray, w: int, h: int):
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T["sensor_msgs/msg/CameraInfo"](header=header(T, stamp, frame), height=h, width=w, distortion_model="plumb_bob",
                                           d=np.zeros(5), k=K.reshape(-1), r=np.eye(3).reshape(-1),
                                           p=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def write_bag(path, scene, stamps, world: str = "map", storage: str = "mcap", depth_encoding: str = "16UC1",
              depth_delay: float = 0.004, orphan_colour: bool = True, transport: str = "raw",
              color_codec: str = "jpeg", tf: bool = True, topics=("color", "depth", "info")):
    """Write `scene` (its frames at `stamps`) to the rosbag2 `path` (see the module docstring).
    transport "compressed" writes /color/image/compressed (color_codec jpeg or png) and
    /depth/image/compressedDepth; `tf` False leaves TF out and `topics` may leave out camera
    topics (bags a node cannot use). Returns `path`."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    TS, T = _types()
    packed = transport == "compressed"
    names = {"color": "/color/image/compressed" if packed else "/color/image",
             "depth": "/depth/image/compressedDepth" if packed else "/depth/image", "info": "/color/camera_info"}
    image_type = "sensor_msgs/msg/CompressedImage" if packed else "sensor_msgs/msg/Image"
    kinds = [(names["color"], image_type, "color"), (names["depth"], image_type, "depth"),
             (names["info"], "sensor_msgs/msg/CameraInfo", "info")]
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    h, w = scene.depth.shape[1:]
    with Writer(path, version=9, storage_plugin=plugin) as bag:
        conns = {kind: bag.add_connection(topic, msgtype, typestore=TS) for topic, msgtype, kind in kinds
                 if kind in topics}
        if tf:
            conns["tf"] = bag.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=TS)
            conns["tf_static"] = bag.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=TS)

        def put(kind, stamp, msg):
            if kind in conns:
                bag.write(conns[kind], int(round(stamp * 1e9)), TS.serialize_cdr(msg, msg.__msgtype__))

        def colour(t, rgb):
            return compressed(T, t, CAMERA_FRAME, *encode_color(rgb, color_codec)) if packed else \
                image(T, t, CAMERA_FRAME, rgb, "rgb8")

        put("tf_static", stamps[0] - 1.0, T["tf2_msgs/msg/TFMessage"](
            transforms=[transform(T, "base_link", CAMERA_FRAME, 0.0, MOUNT)]))
        for i, t in enumerate(stamps):
            base = scene.poses[i] @ g.invert_transform(MOUNT)
            for dt, shift in ((-0.05, -0.02), (0.05, 0.02)):  # linear motion through the true pose
                moved = base.copy()
                moved[:3, 3] += shift
                put("tf", t + dt, T["tf2_msgs/msg/TFMessage"](transforms=[transform(T, world, "base_link", t + dt, moved)]))
            td = t + depth_delay
            if packed:
                depth = compressed(T, td, CAMERA_FRAME, *encode_depth(scene.depth[i], depth_encoding))
            else:
                d = scene.depth[i]
                d = np.round(d * 1000).astype("<u2") if depth_encoding == "16UC1" else d.astype("<f4")
                depth = image(T, td, CAMERA_FRAME, d, depth_encoding)
            put("info", t, camera_info(T, t, CAMERA_FRAME, scene.intrinsics[i], w, h))
            put("color", t, colour(t, scene.rgb[i]))
            put("depth", td, depth)
        if orphan_colour:  # a colour image whose depth never came: skipped
            put("color", stamps[-1] + 0.3, colour(stamps[-1] + 0.3, scene.rgb[0]))
    return path
