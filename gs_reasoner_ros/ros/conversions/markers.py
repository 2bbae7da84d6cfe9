"""RViz markers for grounded objects, and their decoding (for tests and the demo).

One answer -> a MarkerArray: DELETEALL first (so boxes of a previous answer vanish), then per
object i a LINE_LIST box (id 2*i, namespace "boxes") with the 12 edges of its oriented box,
and a TEXT_VIEW_FACING label "label (conf)" (id 2*i+1, namespace "labels") above it.
A streamed answer sends the DELETEALL alone when its question starts, then, as each box closes,
every box so far without it (delete_all=False): the ids stay those of the final answer.
"""
from __future__ import annotations

import colorsys

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from gs_reasoner_ros import geometry
from gs_reasoner_ros.ros.conversions.stamps import header

BOX_NS, LABEL_NS = "boxes", "labels"
LINE_WIDTH = 0.02
TEXT_HEIGHT = 0.15


def color_of(i: int) -> ColorRGBA:
    """Distinct, stable colour per object index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95)
    return ColorRGBA(r=r, g=g, b=b, a=1.0)


def label_text(label: str, confidence: float) -> str:
    return f"{label} ({confidence:.2f})"


def box_markers(objects, frame_id: str, stamp: float, delete_all: bool = True) -> MarkerArray:
    """MarkerArray for objects with label, center, quat (xyzw), size, confidence (world frame);
    delete_all: begin with a DELETEALL (a new answer), else only add/replace these ids."""
    hdr = header(frame_id, stamp)
    out = [Marker(header=hdr, action=Marker.DELETEALL)] if delete_all else []
    edges = geometry.box_edges()
    for i, obj in enumerate(objects):
        corners = geometry.box_corners(obj.center, obj.quat, obj.size)
        color = color_of(i)
        box = Marker(header=hdr, ns=BOX_NS, id=2 * i, type=Marker.LINE_LIST, action=Marker.ADD,
                     frame_locked=True, color=color)
        box.pose.orientation.w = 1.0
        box.scale.x = LINE_WIDTH
        box.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in corners[edges.ravel()]]
        text = Marker(header=hdr, ns=LABEL_NS, id=2 * i + 1, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                      frame_locked=True, color=color, text=label_text(obj.label, obj.confidence))
        top = corners.mean(axis=0)
        text.pose.position = Point(x=float(top[0]), y=float(top[1]),
                                   z=float(corners[:, 2].max() + TEXT_HEIGHT))
        text.pose.orientation.w = 1.0
        text.scale.z = TEXT_HEIGHT
        out += [box, text]
    return MarkerArray(markers=out)


def decode_boxes(array: MarkerArray) -> list[tuple[str, np.ndarray]]:
    """[(label text, (8,3) corners)] in id order, from the boxes and labels of `array`.
    Corners are recovered from the LINE_LIST segments (each corner is on 3 edges)."""
    boxes = {m.id: m for m in array.markers if m.ns == BOX_NS and m.type == Marker.LINE_LIST}
    labels = {m.id: m.text for m in array.markers if m.ns == LABEL_NS}
    out = []
    for mid in sorted(boxes):
        pts = np.array([[p.x, p.y, p.z] for p in boxes[mid].points])
        if len(pts) != 24:
            raise ValueError(f"box marker {mid} has {len(pts)} points, a box has 24 (12 edges)")
        corners = np.unique(np.round(pts, 6), axis=0)
        out.append((labels.get(mid + 1, ""), corners))
    return out
