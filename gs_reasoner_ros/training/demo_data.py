"""Questions about generated rooms in the GS-Reasoner-Data schema, and the demo training set.

Per room (`room_questions`, boxes given in any frame as min/max corners):
- grounding (dataset "scanrefer"): "the sofa." for a class with one piece; for a class with
  several, a relation to a one-piece anchor that singles one out: "the chair nearest the bed.",
  "the chair farthest from the desk.", "the lamp left of the desk." (left and right as seen from
  the first keyframe's camera looking at the anchor);
- counting ("vsibench_cot", object_counting, no chain of thought as in the paper):
  "How many chair(s) are in this room?";
- object size (object_size_estimation, longest side in cm) and distance between two objects
  (object_abs_distance, closest points, metres) with the grounded chain of thought: the boxes of
  the objects involved, written in the frame of the sample's stored augmentation (a 90-degree
  turn and shifts only, which keep sizes and distances), then the measurement.

`write_demo_dataset(root, seeds)` records one room per seed through rooms.record_room (the
node's keyframes, alignment and ~/export_scene code) into root/demo/room_NNNNN and writes
grounding.json, gcot.json, pretrain.yaml (grounding) and finetune.yaml (grounding + GCoT).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from gs_reasoner_ros.reasoning import load_prompts
from gs_reasoner_ros.training.augment import ROT_Z_CHOICES, PointAugmentation
from gs_reasoner_ros.training.data import format_box

MARGIN_M = 0.3  # how much nearer / further / more to one side the chosen piece must be
COUNT_Q = "How many {}(s) are in this room?"
SIZE_Q = ("What is the length of the longest dimension (length, width, or height) of the {}, "
          "measured in centimeters?")
DISTANCE_Q = ("Measuring from the closest point of each object, what is the direct distance between the {} "
              "and the {} (in meters)?")


def _centre(box) -> np.ndarray:
    return (np.asarray(box[:3]) + np.asarray(box[3:])) / 2


def box_distance(a, b) -> float:
    """Distance between the closest points of two axis-aligned min/max boxes (0 when touching)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    gap = np.maximum(0.0, np.maximum(a[:3] - b[3:], b[:3] - a[3:]))
    return float(np.linalg.norm(gap))


def _lateral(viewer: np.ndarray, anchor, point) -> float:
    """How far `point` lies to the right (+) of `anchor` for a viewer at viewer's position
    looking at the anchor, in the horizontal plane."""
    forward = _centre(anchor)[:2] - viewer[:2, 3]
    forward /= max(np.linalg.norm(forward), 1e-9)
    right = np.array([forward[1], -forward[0]])  # forward x up, z up
    return float((_centre(point)[:2] - _centre(anchor)[:2]) @ right)


def describe(labels: Sequence[str], boxes: np.ndarray, k: int, viewer: np.ndarray,
             rng: np.random.Generator) -> str | None:
    """A description that singles out object k, or None when no relation does."""
    label = labels[k]
    same = [i for i, name in enumerate(labels) if name == label]
    if len(same) == 1:
        return f"the {label}."
    counts = Counter(labels)
    anchors = [i for i, name in enumerate(labels) if counts[name] == 1]
    for a in rng.permutation(anchors) if anchors else []:
        anchor = labels[a]
        dist = {i: float(np.linalg.norm(_centre(boxes[i]) - _centre(boxes[a]))) for i in same}
        side = {i: _lateral(viewer, boxes[a], boxes[i]) for i in same}
        others = [i for i in same if i != k]
        tests = [(all(dist[k] + MARGIN_M < dist[i] for i in others), f"the {label} nearest the {anchor}."),
                 (all(dist[k] > dist[i] + MARGIN_M for i in others), f"the {label} farthest from the {anchor}."),
                 (side[k] < -MARGIN_M and all(side[i] > 0 for i in others), f"the {label} left of the {anchor}."),
                 (side[k] > MARGIN_M and all(side[i] < 0 for i in others), f"the {label} right of the {anchor}.")]
        found = [text for ok, text in tests if ok]
        if found:
            return found[int(rng.integers(len(found)))]
    return None


def _entry(label: str, k: int, box) -> dict:
    box = np.asarray(box, float)
    centre_size = np.concatenate([(box[:3] + box[3:]) / 2, box[3:] - box[:3]])
    return {"object_name": label, "object_id": [k], "object_bbox": [[round(float(v), 4) for v in centre_size]]}


def grounding_samples(video: str, labels, boxes, viewer, rng) -> list[dict]:
    out = []
    for k, label in enumerate(labels):
        text = describe(labels, boxes, k, viewer, rng)
        if text is None:
            continue
        out.append({"id": f"{video}/ground/{k}", "video": video,
                    "conversations": [{"from": "human", "value": f"<image>\n{text}"},
                                      {"from": "gpt", "value": "<ground>"}],
                    "metadata": {"dataset": "scanrefer", "object": [_entry(label, k, boxes[k])],
                                 "target_object_id": k,
                                 "question_type": "unique" if labels.count(label) == 1 else "multiple"}})
    return out


def _rigid_augmentation(rng) -> PointAugmentation:
    """A stored GCoT transform that keeps lengths: a quarter turn and shifts, no scaling."""
    rot = float(rng.choice(ROT_Z_CHOICES)) if rng.random() < 0.5 else None
    return PointAugmentation(None, rot, tuple(float(rng.uniform(-1, 1)) if rng.random() < 0.5 else None
                                              for _ in range(3)))


def _gcot(video: str, key: str, qtype: str, question: str, think: str, answer: str, aug: PointAugmentation) -> dict:
    source, _, scene = video.rpartition("/")  # scene_key joins them back: "<source>/<scene>"
    cot = load_prompts()["grounded_cot"]
    return {"id": f"{video}/{key}", "data_source": source, "scene_name": scene,
            "conversations": [{"from": "human", "value": f"<image>\n{cot}\n{question}\n"},
                              {"from": "gpt", "value": f"<think>{think}</think><answer>{answer}</answer>"}],
            "metadata": {"dataset": "vsibench_cot", "question_type": qtype, "data_augmentation": aug.to_config()},
            "ground_truth": answer}


def gcot_samples(video: str, labels, boxes, rng) -> list[dict]:
    """Counting, size and distance questions (see the module docstring)."""
    counts = Counter(labels)
    out = []
    for label in rng.permutation(sorted(counts))[:3]:
        out.append(_gcot(video, f"count/{label}", "object_counting", COUNT_Q.format(label), "",
                         str(counts[label]), PointAugmentation()))
    unique = [i for i, name in enumerate(labels) if counts[name] == 1]
    for i in rng.permutation(unique)[:2]:
        aug = _rigid_augmentation(rng)
        box = aug.apply_boxes_minmax(boxes[i][None])[0]
        longest = float(np.max(boxes[i][3:] - boxes[i][:3]))
        think = f"{labels[i]} 1 <bbox>{format_box(box)}</bbox>\nIts longest side is {longest:.2f} m."
        out.append(_gcot(video, f"size/{labels[i]}", "object_size_estimation", SIZE_Q.format(labels[i]), think,
                         str(int(round(longest * 100))), aug))
    pairs = [(a, b) for n, a in enumerate(unique) for b in unique[n + 1:]]
    for p in rng.permutation(len(pairs))[:2]:
        a, b = pairs[p]
        aug = _rigid_augmentation(rng)
        moved = aug.apply_boxes_minmax(np.stack([boxes[a], boxes[b]]))
        d = box_distance(boxes[a], boxes[b])
        think = (f"{labels[a]} 1 <bbox>{format_box(moved[0])}</bbox>, {labels[b]} 1 <bbox>{format_box(moved[1])}"
                 f"</bbox>\nThe closest points are {d:.2f} m apart.")
        out.append(_gcot(video, f"distance/{labels[a]}-{labels[b]}", "object_abs_distance",
                         DISTANCE_Q.format(labels[a], labels[b]), think, f"{d:.1f}", aug))
    return out


def room_questions(video: str, labels, boxes, viewer, seed: int) -> tuple[list[dict], list[dict]]:
    """(grounding samples, GCoT samples) of one room; boxes (n,6) min/max in the scene's frame."""
    rng = np.random.default_rng([seed, 7])
    labels, boxes = list(labels), np.asarray(boxes, float)
    return grounding_samples(video, labels, boxes, viewer, rng), gcot_samples(video, labels, boxes, rng)


def _record_one(job: tuple) -> tuple[list[dict], list[dict]]:
    from gs_reasoner_ros.training.rooms import camera_walk, demo_room, record_room

    root, seed = job
    room = demo_room(seed)
    name = f"room_{seed:05d}"
    rec = record_room(room, camera_walk(room, seed), Path(root) / "demo", name)
    return room_questions(f"demo/{name}", rec.labels, rec.boxes, rec.viewer, seed)


def write_demo_dataset(root, seeds: Sequence[int], workers: int = 1, log=print) -> dict[str, Path]:
    """Record a room per seed under root/demo and write the sample files and mixtures."""
    root = Path(root)
    (root / "demo").mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), int(s)) for s in seeds]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(_record_one, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    else:
        results = [_record_one(job) for job in jobs]
    grounding = [s for g, _ in results for s in g]
    gcot = [s for _, c in results for s in c]
    paths = {"grounding": root / "grounding.json", "gcot": root / "gcot.json"}
    paths["grounding"].write_text(json.dumps(grounding), encoding="utf-8")
    paths["gcot"].write_text(json.dumps(gcot), encoding="utf-8")
    paths["pretrain"] = root / "pretrain.yaml"
    paths["pretrain"].write_text("datasets:\n  - json_path: grounding.json\n    sampling_strategy: all\n")
    paths["finetune"] = root / "finetune.yaml"
    paths["finetune"].write_text("datasets:\n  - json_path: grounding.json\n    sampling_strategy: all\n"
                                 "  - json_path: gcot.json\n    sampling_strategy: all\n")
    log(json.dumps({"event": "data", "rooms": len(jobs), "grounding": len(grounding), "gcot": len(gcot),
                    "types": dict(Counter(s["metadata"].get("question_type") for s in grounding + gcot))}))
    return paths
