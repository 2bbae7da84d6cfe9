"""Box helpers without the official quirks: the lenient `NAME COUNT <bbox>` parser used for
training targets and display, plain axis-aligned IoU, and the maximum-weight assignment.

The official (quirk-for-quirk) grounding scores live in grounding.py; these are kept for the
callers that want geometry, not the published numbers.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from gs_reasoner_ros import geometry

_BOX_GROUP = re.compile(r"([^\s,<>][^,<>]*?)\s+(\d+)\s+((?:<bbox>\([^)]*\)</bbox>)+)")
_BOX = re.compile(r"<bbox>\(([^)]*)\)</bbox>")


def parse_box_groups(text: str) -> list[tuple[str, list[np.ndarray]]]:
    """`name count <bbox>(x1, y1, z1, x2, y2, z2)</bbox>...` groups in output order.

    Each box comes back as a (6,) [min xyz, max xyz] array. Lenient, NOT the official parser
    (that is grounding.decode_box_groups): boxes whose text does not hold six finite numbers are
    dropped, and names may hold several words or punctuation (`brown chair`, `chair:`).
    """
    groups = []
    for name, _count, boxes_text in _BOX_GROUP.findall(str(text or "")):
        boxes = []
        for inner in _BOX.findall(boxes_text):
            try:
                values = [float(v) for v in inner.split(",")]
            except ValueError:
                continue
            if len(values) == 6 and all(math.isfinite(v) for v in values):
                boxes.append(np.asarray(values, dtype=np.float64))
        if boxes:
            groups.append((name.strip(), boxes))
    return groups


def box_from_center_size(box) -> np.ndarray:
    """[cx, cy, cz, dx, dy, dz] (the datasets' metadata form) -> [min xyz, max xyz]."""
    b = np.asarray(box, dtype=np.float64).reshape(6)
    half = np.abs(b[3:]) / 2.0
    return np.concatenate([b[:3] - half, b[:3] + half])


def aabb_iou(a, b) -> float:
    """IoU of two axis-aligned boxes given as [min xyz, max xyz] (corners in either order)."""
    a = np.asarray(a, dtype=np.float64).reshape(2, 3)
    b = np.asarray(b, dtype=np.float64).reshape(2, 3)
    return geometry.aabb_iou(a.min(0), a.max(0), b.min(0), b.max(0))


def iou_matrix(preds: Sequence, gts: Sequence) -> np.ndarray:
    """Pairwise aabb_iou, shape (len(preds), len(gts))."""
    m = np.zeros((len(preds), len(gts)))
    for i, p in enumerate(preds):
        for j, g in enumerate(gts):
            m[i, j] = aabb_iou(p, g)
    return m


def scanrefer_iou(groups: list[tuple[str, list[np.ndarray]]], gt_box, best_of_groups: bool) -> float:
    """Plain-IoU version of the authors' box choice against the GT box ([min, max]); the
    official score (with its IoU quirks) is grounding.scanrefer_official_iou.

    Without `target_object_id` the first box of the first group is scored; with it,
    the best IoU among the *first box of every group* (an oracle-style choice that favours
    answers naming several objects). No parsed box scores 0.
    """
    if not groups:
        return 0.0
    if best_of_groups:
        return max(aabb_iou(boxes[0], gt_box) for _, boxes in groups)
    return aabb_iou(groups[0][1][0], gt_box)



def linear_sum_assignment_max(weights: np.ndarray) -> list[tuple[int, int]]:
    """Row/column pairs of a maximum-total-weight assignment of a rectangular matrix.

    Uses scipy when installed, otherwise the O(n^3) Hungarian algorithm with potentials
    below (minimising the negated weights on the zero-padded square matrix, as the authors do).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        return []
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        return _hungarian_max(w)
    rows, cols = linear_sum_assignment(-w)
    return list(zip(rows.tolist(), cols.tolist()))


def _hungarian_max(w: np.ndarray) -> list[tuple[int, int]]:
    n_rows, n_cols = w.shape
    n = max(n_rows, n_cols)
    cost = np.zeros((n + 1, n + 1))
    cost[1:n_rows + 1, 1:n_cols + 1] = -w  # padding rows/cols cost 0
    u, v = np.zeros(n + 1), np.zeros(n + 1)
    match = np.zeros(n + 1, dtype=np.int64)  # match[col] = row, 1-based, 0 = free
    for row in range(1, n + 1):
        # Grow an alternating tree from `row` along tight edges (Dijkstra on reduced costs).
        match[0] = row
        col0 = 0
        min_slack = np.full(n + 1, np.inf)
        way = np.zeros(n + 1, dtype=np.int64)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[col0] = True
            r = match[col0]
            slack = cost[r, 1:] - u[r] - v[1:]
            free = ~used[1:]
            better = free & (slack < min_slack[1:])
            min_slack[1:][better] = slack[better]
            way[1:][better] = col0
            candidates = np.where(free, min_slack[1:], np.inf)
            col1 = int(np.argmin(candidates)) + 1
            delta = candidates[col1 - 1]
            u[match[used]] += delta
            v[used] -= delta
            min_slack[1:][free] -= delta
            col0 = col1
            if match[col0] == 0:
                break
        while col0:  # flip the augmenting path
            prev = way[col0]
            match[col0] = match[prev]
            col0 = prev
    return sorted((int(match[c]) - 1, c - 1) for c in range(1, n + 1)
                  if 0 < match[c] <= n_rows and c <= n_cols)


def multi3drefer_f1(pred_boxes: Sequence, gt_boxes: Sequence) -> tuple[float, float]:
    """(F1@0.25, F1@0.5) of one query, boxes as [min, max], with plain float64 IoU (the
    official float32 version is grounding.multi3drefer_official_f1).

    One matching that maximises the summed IoU, then a matched pair is a true
    positive at a threshold when its IoU >= threshold; F1 = 2 TP / (|pred| + |gt|); no
    prediction and no target scores 1, exactly one of them empty scores 0.
    """
    if not pred_boxes and not gt_boxes:
        return 1.0, 1.0
    if not pred_boxes or not gt_boxes:
        return 0.0, 0.0
    ious = iou_matrix(pred_boxes, gt_boxes)
    matched = np.asarray([ious[i, j] for i, j in linear_sum_assignment_max(ious)])
    denom = len(pred_boxes) + len(gt_boxes)
    return (2.0 * float(np.sum(matched >= 0.25)) / denom, 2.0 * float(np.sum(matched >= 0.5)) / denom)
