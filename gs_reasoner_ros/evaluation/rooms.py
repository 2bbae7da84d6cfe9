"""Scores on generated rooms: the demo model's held-out evaluation, ROS-free.

`room_eval_items` turns a room's questions (training.demo_data, the same generator as the
training labels) into items to answer: grounding descriptions for ~/ground and counting, size and
distance questions for ~/ask (grounded chain of thought). Whoever answers (the node over ROS in
tools/demo_eval.py, or a Reasoner on the recorded folder in the training recipe) returns the box
list or the answer text; `score_items` gives, per question type, ScanRefer Acc@0.25 / Acc@0.5
(axis-aligned IoU of the first returned box, evaluation.boxes.aabb_iou), counting accuracy and the
VSI-Bench mean relative accuracy for sizes and distances (evaluation.metrics).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from gs_reasoner_ros.evaluation.boxes import aabb_iou, box_from_center_size
from gs_reasoner_ros.evaluation.metrics import vsibench_score

GROUND, ASK = "ground", "ask"


def room_eval_items(video: str, labels: Sequence[str], boxes: np.ndarray, viewer: np.ndarray, seed: int
                    ) -> list[dict]:
    """Items {"kind", "question", "question_type", "box" (min/max, ground) | "ground_truth" (ask)}."""
    from gs_reasoner_ros.training.demo_data import room_questions

    grounding, gcot = room_questions(video, labels, boxes, viewer, seed)
    items = []
    for s in grounding:
        text = s["conversations"][0]["value"].replace("<image>\n", "")
        box = box_from_center_size(s["metadata"]["object"][0]["object_bbox"][0])
        items.append({"kind": GROUND, "question": text, "question_type": f"ground_{s['metadata']['question_type']}",
                      "box": box.tolist(), "video": video})
    for s in gcot:
        question = s["conversations"][0]["value"].rstrip("\n").rsplit("\n", 1)[-1]
        items.append({"kind": ASK, "question": question, "question_type": s["metadata"]["question_type"],
                      "ground_truth": s["ground_truth"], "video": video})
    return items


def item_score(item: dict, boxes: Sequence | None = None, text: str = "") -> dict:
    """The item with its outcome: iou (ground; 0 without a box) or score (ask, VSI-Bench)."""
    out = dict(item)
    if item["kind"] == GROUND:
        first = boxes[0] if boxes else None
        out["iou"] = aabb_iou(first, item["box"]) if first is not None else 0.0
        out["pred_box"] = None if first is None else [float(v) for v in np.asarray(first).reshape(6)]
    else:
        out["score"] = vsibench_score(item["question_type"], text, item["ground_truth"])
        out["answer_text"] = text
    return out


def score_items(scored: Sequence[dict]) -> dict:
    """Per question type and over all grounding: n, and acc@0.25 / acc@0.5 (grounding) or the mean
    VSI-Bench score (counting: accuracy; size, distance: MRA)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in scored:
        groups[s["question_type"]].append(s)
        if s["kind"] == GROUND:
            groups["ground_all"].append(s)
    table = {}
    for name, rows in sorted(groups.items()):
        if rows[0]["kind"] == GROUND:
            ious = np.array([r["iou"] for r in rows])
            table[name] = {"n": len(rows), "acc@0.25": float(np.mean(ious >= 0.25)),
                           "acc@0.5": float(np.mean(ious >= 0.5)), "mean_iou": float(ious.mean())}
        else:
            table[name] = {"n": len(rows), "score": float(np.mean([r["score"] for r in rows]))}
    return table


def format_scores(table: dict) -> str:
    lines = []
    for name, row in table.items():
        if "acc@0.25" in row:
            lines.append(f"{name:28s} n={row['n']:4d}  Acc@0.25 {row['acc@0.25']:.3f}  Acc@0.5 {row['acc@0.5']:.3f}  "
                         f"mean IoU {row['mean_iou']:.3f}")
        else:
            label = "accuracy" if name == "object_counting" else "MRA"
            lines.append(f"{name:28s} n={row['n']:4d}  {label} {row['score']:.3f}")
    return "\n".join(lines)


def answer_with_reasoner(reasoner, scene, item: dict, max_new_tokens: int = 0) -> dict:
    """One item answered by a Reasoner on a Scene (boxes in the scene's model frame)."""
    task = "ground" if item["kind"] == GROUND else "spatial"
    answer = reasoner.answer(scene, item["question"], task=task, max_new_tokens=max_new_tokens or None)
    boxes = [np.concatenate([b.box_min, b.box_max]) for b in answer.objects]
    return item_score(item, boxes, answer.text)
