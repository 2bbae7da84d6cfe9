"""sensor_msgs/PointCloud2 <-> (N,3) points and colours (PCL-style packed rgb)."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

from gs_reasoner_ros.ros.conversions.stamps import header


_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])


def cloud_msg(points: np.ndarray, colors: np.ndarray, stamp: float, frame_id: str) -> PointCloud2:
    """(N,3) float points + (N,3) uint8 colours -> unorganised PointCloud2 with x, y, z and
    the PCL-style packed rgb (0x00RRGGBB bits, declared FLOAT32 so RViz and PCL read it)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(points) != len(colors):
        raise ValueError(f"{len(points)} points but {len(colors)} colours")
    buf = np.empty(len(points), dtype=_CLOUD_DTYPE)
    buf["x"], buf["y"], buf["z"] = points.T
    c = colors.astype(np.uint32)
    buf["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, n in enumerate(("x", "y", "z", "rgb"))]
    return PointCloud2(header=header(frame_id, stamp), height=1, width=len(points), fields=fields,
                       is_bigendian=False, point_step=16, row_step=16 * len(points),
                       data=buf.tobytes(), is_dense=True)


_FIELD_TYPES = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
                PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8"}


def cloud_to_arrays(msg: PointCloud2) -> tuple[np.ndarray, np.ndarray | None]:
    """PointCloud2 -> ((N,3) float32 xyz, (N,3) uint8 rgb or None) for any field layout."""
    byteorder = ">" if msg.is_bigendian else "<"
    fields = {f.name: f for f in msg.fields}
    if not {"x", "y", "z"} <= fields.keys():
        raise ValueError(f"cloud has no x, y, z fields (has {sorted(fields)})")
    names = [k for k in ("x", "y", "z", "rgb") if k in fields]
    for k in names:
        if fields[k].datatype not in _FIELD_TYPES:
            raise ValueError(f"cloud field {k!r} has unknown datatype {fields[k].datatype}")
    h, w, step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    formats = [byteorder + _FIELD_TYPES[fields[k].datatype] for k in names]
    end = max(fields[k].offset + np.dtype(f).itemsize for k, f in zip(names, formats))
    if h * w and (step < end or row_step < w * step or len(msg.data) < h * row_step):
        raise ValueError(f"cloud layout does not fit: {w}x{h} points, point_step {step}, "
                         f"row_step {row_step}, {len(msg.data)} bytes, fields end at byte {end}")
    dtype = np.dtype({"names": names, "formats": formats,
                      "offsets": [fields[k].offset for k in names], "itemsize": max(step, end)})
    raw = np.frombuffer(msg.data, dtype=np.uint8)[: h * row_step].reshape(h, row_step)[:, : w * step]
    pts = np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype=dtype) if h * w else np.zeros(0, dtype)
    xyz = np.stack([pts["x"], pts["y"], pts["z"]], axis=1).astype(np.float32)
    if "rgb" not in names:
        return xyz, None
    field = np.ascontiguousarray(pts["rgb"])
    packed = field.view(byteorder + "u4") if field.dtype.itemsize == 4 else field.astype(np.uint32)
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return xyz, rgb
