"""Pictures and files a person looks at: coloured PLY point clouds and a bird's-eye PNG of the
map with the answer's boxes drawn and labelled."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .geometry import box_corners

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _points_colors(points, colors) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (N,3), got {pts.shape}")
    if colors is None:
        return pts, np.full(pts.shape, 200, np.uint8)
    cols = np.asarray(colors)
    if cols.shape != pts.shape:
        raise ValueError(f"colors must be (N,3) like points {pts.shape}, got {cols.shape}")
    if cols.dtype != np.uint8:
        raise ValueError(f"colors must be uint8, got {cols.dtype}")
    return pts, cols


def write_ply(path: str | os.PathLike, points, colors=None) -> Path:
    """Binary little-endian PLY: vertex x y z (float) and red green blue (uchar)."""
    pts, cols = _points_colors(points, colors)
    vertex = np.empty(len(pts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                       ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = pts.T
    vertex["red"], vertex["green"], vertex["blue"] = cols.T
    header = ("ply\nformat binary_little_endian 1.0\ncomment written by gs_reasoner_ros\n"
              f"element vertex {len(pts)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path = Path(path)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())
    return path


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(points (N,3) float32, colors (N,3) uint8 or None) of a PLY file's vertices; binary
    little/big-endian or ascii; other elements after the vertices are ignored."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        fmt, props, count, in_vertex, first = None, [], None, False, True
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                in_vertex = words[1] == "vertex"
                if in_vertex:
                    count = int(words[2])
                elif count is None:
                    first = False  # another element comes before the vertices
            elif words[0] == "property" and in_vertex:
                if words[1] == "list" or words[1] not in _PLY_TYPES:
                    raise ValueError(f"{path}: unsupported vertex property {' '.join(words[1:])}")
                props.append((words[2], _PLY_TYPES[words[1]]))
        if count is None or not {"x", "y", "z"} <= {p for p, _ in props}:
            raise ValueError(f"{path}: no vertex element with x, y, z")
        if not first:
            raise ValueError(f"{path}: vertices must be the first element")
        if fmt == "ascii":
            rows = [f.readline().split() for _ in range(count)]
            data = np.array(rows, dtype=np.float64).reshape(count, len(props))
            vertex = {name: data[:, i] for i, (name, _) in enumerate(props)}
        elif fmt in ("binary_little_endian", "binary_big_endian"):
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(name, order + t) for name, t in props])
            raw = f.read(dtype.itemsize * count)
            if len(raw) < dtype.itemsize * count:
                raise ValueError(f"{path}: file is shorter than its {count} vertices")
            vertex = np.frombuffer(raw, dtype)
        else:
            raise ValueError(f"{path}: unknown PLY format {fmt!r}")
    points = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    names = {p for p, _ in props}
    if {"red", "green", "blue"} <= names:
        colors = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
    else:
        colors = None
    return points, colors


def birds_eye_image(points, colors=None, boxes=(), resolution: float = 0.02, z_max: float | None = None,
                    margin: float = 0.3, min_size: int = 0):
    """A top-down Pillow image of a z-up cloud: each pixel shows its highest point below `z_max`
    (by default 2 m above the floor, taken as the 1st percentile of z, so a ceiling does not
    hide the room), with `boxes` [(label, center, quat, size)] drawn as footprints and labelled.
    x runs right and y up; `resolution` is metres per pixel. With `min_size`, the cloud's pixels
    are repeated a whole number of times until the longer side has at least that many pixels
    (a room at 2 cm per pixel is only a few hundred wide), and boxes and labels are drawn at
    that size."""
    from PIL import Image, ImageDraw, ImageFont

    pts, cols = _points_colors(points, colors)
    if not (np.isfinite(resolution) and resolution > 0):
        raise ValueError(f"resolution must be positive metres per pixel, got {resolution}")
    keep = np.all(np.isfinite(pts), axis=1)
    pts, cols = pts[keep], cols[keep]
    if len(pts) and z_max is None:
        z_max = float(np.percentile(pts[:, 2], 1)) + 2.0
    if len(pts):
        below = pts[:, 2] <= z_max
        pts, cols = pts[below], cols[below]
    footprints = [(str(label), box_corners(c, q, s)[:4, :2]) for label, c, q, s in boxes]
    xy = np.concatenate([pts[:, :2].astype(np.float64)] + [f for _, f in footprints])
    if len(xy) == 0:  # nothing to draw: a small blank picture around the origin
        xy = np.zeros((1, 2))
    lo, hi = xy.min(axis=0) - margin, xy.max(axis=0) + margin
    width, height = np.ceil((hi - lo) / resolution).astype(int) + 1
    if width * height > 64_000_000:
        raise ValueError(f"image would be {width}x{height} pixels: raise the resolution (metres per pixel)")
    image = np.full((height, width, 3), 255, np.uint8)
    if len(pts):
        col = ((pts[:, 0].astype(np.float64) - lo[0]) / resolution).astype(int)
        row = ((hi[1] - pts[:, 1].astype(np.float64)) / resolution).astype(int)
        order = np.argsort(pts[:, 2], kind="stable")
        # Keep the highest point per pixel: after sorting by height, the last one of each pixel.
        pixel = (row * width + col)[order]
        last = np.unique(pixel[::-1], return_index=True)[1]
        top = order[len(order) - 1 - last]
        image[row[top], col[top]] = cols[top]
    zoom = max(1, -(-int(min_size) // max(width, height)))
    picture = Image.fromarray(image)
    if zoom > 1:
        picture = picture.resize((width * zoom, height * zoom), Image.NEAREST)
    scale = zoom / resolution  # pixels per metre in the picture
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=11 + 3 * (zoom - 1)) if zoom > 1 else None
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
               (240, 50, 230), (128, 128, 0)]
    for i, (label, corners) in enumerate(footprints):
        px = [((x - lo[0]) * scale, (hi[1] - y) * scale) for x, y in corners[[0, 1, 3, 2]]]
        colour = palette[i % len(palette)]
        draw.polygon(px, outline=colour, width=max(1, int(0.03 * scale)))
        anchor = min(px, key=lambda p: (p[1], p[0]))
        draw.text((anchor[0] + 2, max(anchor[1] - 12 * zoom, 0)), label, fill=colour, font=font)
    return picture


def birds_eye_png(path: str | os.PathLike, points, colors=None, boxes=(), resolution: float = 0.02,
                  z_max: float | None = None, min_size: int = 0) -> Path:
    """Write `birds_eye_image(points, colors, boxes, resolution, z_max, min_size=min_size)` as a PNG."""
    path = Path(path)
    birds_eye_image(points, colors, boxes, resolution, z_max, min_size=min_size).save(path, format="PNG")
    return path
