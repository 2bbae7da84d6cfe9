"""ScanRefer and Multi3DRefer scores exactly as the official GS-Reasoner scripts compute them.

Sources (GS-Reasoner, WU-CVGL/GS-Reasoner): `llava/utils_3d.py` (decode_str_to_bbox,
aabb_to_xyzwlh, compute_3d_iou, find_best_bbox_by_iou), `llava/eval/model_singlerefer.py` and
`model_multi3drefer.py` (which box is kept), `llava/eval/eval_singlerefer.py` and
`eval_multi3drefer.py` (scores), and `llava/eval/box_utils.py` (get_3d_box_corners, box3d_iou;
GS-Reasoner imports it but does not ship it: it is Video-3D-LLM's copy of ScanRefer's box IoU,
read from zd11024/Video-3D-LLM). Every quirk is named where it is reproduced; where the official
code raises (or its try/except skips the sample) we raise SampleDropped instead.

Boxes the model writes are [min xyz, max xyz]; the datasets' boxes are [centre, size].
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from gs_reasoner_ros.evaluation.boxes import linear_sum_assignment_max
from gs_reasoner_ros.evaluation.dropped import SampleDropped

# utils_3d.decode_str_to_bbox: the name is ONE `\w+` word followed by whitespace and a count.
# So `brown chair 2 <bbox>` yields the name `chair`, while `chair: 1 <bbox>`, `chair (left) 1
# <bbox>` or `chair <bbox>` (no count) yield no group at all.
OFFICIAL_BOX_GROUP = re.compile(r"(\w+)\s+(\d+)\s+((?:<bbox>\([^)]*\)</bbox>)+)")
_OFFICIAL_BOX = re.compile(r"<bbox>\(([^)]*)\)</bbox>")


def decode_box_groups(text: str) -> list[tuple[str, list[list[float]]]]:
    """(name, boxes) for every official group in output order, boxes as lists of floats of any
    length (the length is only checked where a box is used, as in the official code).

    utils_3d.decode_str_to_bbox converts every number of every group with float(), so one bad
    number anywhere in the text (`<bbox>()</bbox>`, `1.2.3`) raises for the whole answer.
    """
    groups = []
    for match in OFFICIAL_BOX_GROUP.finditer(str(text or "")):
        boxes = []
        for inner in _OFFICIAL_BOX.findall(match.group(3)):
            try:
                boxes.append([float(v.strip()) for v in inner.split(",")])
            except ValueError as err:
                raise SampleDropped("box_not_numbers", f"utils_3d.decode_str_to_bbox float(): {err}") from None
        groups.append((match.group(1), boxes))
    return groups


def aabb_to_center_size(box: Sequence[float]) -> list[float]:
    """utils_3d.aabb_to_xyzwlh: [x1, y1, z1, x2, y2, z2] -> [centre, x2 - x1, ...] (sizes keep
    their sign). Unpacking raises unless the box has exactly six numbers."""
    if len(box) != 6:
        raise SampleDropped("box_not_six_numbers",
                            f"utils_3d.aabb_to_xyzwlh unpacks 6 values, the box has {len(box)}")
    lo, hi = np.asarray(box[:3], dtype=np.float64), np.asarray(box[3:], dtype=np.float64)
    return [*((lo + hi) / 2).tolist(), *(hi - lo).tolist()]


def _corner_bounds(center_size) -> tuple[np.ndarray, np.ndarray]:
    """box_utils.get_3d_box_corners then get_box3d_min_max: the corners are centre + size/2 and
    centre + (-size/2), so a negative size still gives a proper box (min/max taken after)."""
    b = np.asarray(center_size, dtype=np.float64)
    if b.shape != (6,):
        raise SampleDropped("box_not_six_numbers", f"box_utils.get_3d_box_corners needs 3 + 3 values, got {b.size}")
    a, c = b[:3] + b[3:] / 2, b[:3] + (-b[3:] / 2)
    return np.minimum(a, c), np.maximum(a, c)


def scanrefer_box3d_iou(center_size_a, center_size_b) -> float:
    """box_utils.box3d_iou (ScanRefer's axis-aligned IoU) on [centre, size] boxes.

    Quirk: the union gets + 1e-8, so an IoU of exactly 0.25 or 0.5 lands a hair below the
    threshold (a miss there), and boxes of a few mm score visibly less than their true IoU.
    """
    a_lo, a_hi = _corner_bounds(center_size_a)
    b_lo, b_hi = _corner_bounds(center_size_b)
    with np.errstate(invalid="ignore", over="ignore"):
        ext = np.maximum(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0)
        inter = ext[0] * ext[1] * ext[2]  # same multiplication order as the official code
        da, db = a_hi - a_lo, b_hi - b_lo
        union = da[0] * da[1] * da[2] + db[0] * db[1] * db[2] - inter + 1e-8
        return float(inter / union)


def center_size_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """utils_3d.compute_3d_iou, the IoU find_best_bbox_by_iou ranks with: no 1e-8, touching or
    disjoint boxes (max <= min on an axis) score 0, a non-positive union scores 0, and the
    extent is centre -/+ size/2 without sorting, so a box written max-corner-first (negative
    size) has no intersection with anything."""
    x1, y1, z1, w1, h1, l1 = (float(v) for v in a)
    x2, y2, z2, w2, h2, l2 = (float(v) for v in b)
    lo = (max(x1 - w1 / 2, x2 - w2 / 2), max(y1 - h1 / 2, y2 - h2 / 2), max(z1 - l1 / 2, z2 - l2 / 2))
    hi = (min(x1 + w1 / 2, x2 + w2 / 2), min(y1 + h1 / 2, y2 + h2 / 2), min(z1 + l1 / 2, z2 + l2 / 2))
    if hi[0] <= lo[0] or hi[1] <= lo[1] or hi[2] <= lo[2]:
        return 0.0
    inter = (hi[0] - lo[0]) * (hi[1] - lo[1]) * (hi[2] - lo[2])
    union = w1 * h1 * l1 + w2 * h2 * l2 - inter
    return inter / union if union > 0 else 0.0


def best_box_by_center_size_iou(candidates: Sequence[Sequence[float]], gt) -> list[float] | None:
    """utils_3d.find_best_bbox_by_iou: the first candidate with the strictly highest
    center_size_iou (None when there is none, or when every IoU is NaN)."""
    best, best_iou = None, -1.0
    for box in candidates:
        iou = center_size_iou(box, gt)
        if iou > best_iou:
            best, best_iou = list(box), iou
    return best


def scanrefer_official_iou(groups: list[tuple[str, list[list[float]]]], gt_center_size,
                           has_target_id: bool) -> float:
    """The IoU eval_singlerefer.py scores for one answer (groups from decode_box_groups).

    model_singlerefer.py keeps, with `target_object_id`, the first box of every group that
    scores best by center_size_iou (not by the IoU scored below); without it, the first box of
    the first group. An answer with no group raises there (`bbox_lst[0]`, IndexError, and the
    script has no try/except), so the sample is dropped.
    """
    if has_target_id:
        candidates = [aabb_to_center_size(boxes[0]) for _, boxes in groups]
        pred = best_box_by_center_size_iou(candidates, gt_center_size)
    else:
        pred = aabb_to_center_size(groups[0][1][0]) if groups else None
    if not groups:
        raise SampleDropped("no_box_group", "model_singlerefer.py: bbox_lst[0] on an answer without "
                            "a `NAME COUNT <bbox>(...)</bbox>` group (IndexError)")
    if pred is None:
        raise SampleDropped("no_best_box", "eval_singlerefer.py: pred_response is None (every IoU NaN)")
    # eval_singlerefer.py: box3d_iou(gt corners, pred corners)
    return scanrefer_box3d_iou(gt_center_size, pred)


def multi3drefer_official_f1(groups: list[tuple[str, list[list[float]]]], gt_boxes) -> tuple[float, float]:
    """(F1@0.25, F1@0.5) as eval_multi3drefer.evaluate_one_query scores one answer.

    model_multi3drefer.py keeps the boxes of the FIRST group only. The IoU matrix is a square
    float32 matrix (zero-padded), so an IoU a hair under 0.25 or 0.5 that rounds up in float32
    counts as a hit; one assignment maximises the summed float32 IoU over the padded matrix.
    Both empty scores (1, 1), exactly one empty (0, 0).
    """
    preds = [aabb_to_center_size(box) for box in groups[0][1]] if groups else []
    gts = [list(box) for box in gt_boxes]
    if not preds and not gts:
        return 1.0, 1.0
    if not preds or not gts:
        return 0.0, 0.0
    size = max(len(preds), len(gts))
    ious = np.zeros((size, size), dtype=np.float32)
    for i, pred in enumerate(preds):
        for j, gt in enumerate(gts):
            ious[i, j] = scanrefer_box3d_iou(pred, gt)  # box3d_iou(pred corners, gt corners)
    if not np.isfinite(ious).all():
        raise SampleDropped("iou_not_finite", "eval_multi3drefer.py: scipy linear_sum_assignment "
                            "rejects a matrix with NaN/inf (a box with inf or nan coordinates)")
    pairs = sorted(linear_sum_assignment_max(ious.astype(np.float64)))
    matched = np.asarray([ious[i, j] for i, j in pairs[:len(preds)]], dtype=np.float32)
    denom = len(preds) + len(gts)
    return 2 * int(np.sum(matched >= 0.25)) / denom, 2 * int(np.sum(matched >= 0.5)) / denom
