"""A small dataset in the real formats, from generated rooms (for tests and demos).

`write_synthetic_dataset(root)` renders rooms with gs_reasoner_ros.synthetic, writes each as a
processed-data scene folder `root/synthetic/sceneNNNN`, and sample files in the
GS-Reasoner-Data schema next to it:

    grounding.json    ScanRefer-style (one object, target_object_id) and Multi3DRefer-style
                      (all boxes of a label, zero-target queries) samples with "<ground>" answers
    qa.json           ScanQA-style questions with metadata.answers
    gcot.json         VSI-Bench-style GCoT samples (dataset vsibench_cot) whose think text
                      holds boxes written in the frame of their stored data_augmentation
    vsibench.json     evaluation records (question, options, ground_truth, question_type)
    pretrain.yaml / finetune.yaml   mixtures in the authors' format (first:90% / end:10% + the rest)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gs_reasoner_ros.reasoning import load_prompts
from gs_reasoner_ros.training.augment import PointAugmentation
from gs_reasoner_ros.training.data import format_box

ABSENT_LABELS = ("piano", "bathtub", "toilet")


def _center_size(lo, hi) -> list[float]:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return [round(float(v), 6) for v in np.concatenate([(lo + hi) / 2, hi - lo])]


def _object_entries(room) -> list[dict]:
    return [{"object_name": label, "object_id": [k], "object_bbox": [_center_size(lo, hi)]}
            for k, (label, lo, hi) in enumerate(room.objects)]


def grounding_samples(video: str, room, start_id: int = 0) -> list[dict]:
    """ScanRefer- and Multi3DRefer-style samples for one room."""
    out = []
    objects = _object_entries(room)
    for obj in objects:
        out.append({
            "id": f"{video}/scanrefer/{obj['object_id'][0]}", "video": video,
            "conversations": [{"from": "human", "value": f"<image>\nthe {obj['object_name']} in this room."},
                              {"from": "gpt", "value": "<ground>"}],
            "metadata": {"dataset": "scanrefer", "question_type": "unique", "object": [obj],
                         "target_object_id": obj["object_id"][0]}})
    for obj in objects[:2]:
        out.append({
            "id": f"{video}/multi3drefer/{obj['object_id'][0]}", "video": video,
            "conversations": [{"from": "human", "value": f"<image>\nevery {obj['object_name']} in the room."},
                              {"from": "gpt", "value": "<ground>"}],
            "metadata": {"dataset": "multi3drefer", "question_type": "st_w_d", "object": [obj]}})
    present = {o["object_name"] for o in objects}
    absent = next(label for label in ABSENT_LABELS if label not in present)
    out.append({
        "id": f"{video}/multi3drefer/absent", "video": video,
        "conversations": [{"from": "human", "value": f"<image>\nevery {absent} in the room."},
                          {"from": "gpt", "value": "<ground>"}],
        "metadata": {"dataset": "multi3drefer", "question_type": "zt_w_d",
                     "object": [{"object_name": absent, "object_id": [], "object_bbox": []}]}})
    return out


def qa_samples(video: str, room) -> list[dict]:
    """ScanQA-style counting and size questions (answers in metadata.answers, as ScanQA)."""
    out = []
    for label, lo, hi in room.objects[:3]:
        count = sum(1 for other, _, _ in room.objects if other == label)
        out.append({"id": f"{video}/scanqa/count/{label}", "video": video,
                    "conversations": [{"from": "human", "value": f"<image>\nHow many {label}s are in the room?"},
                                      {"from": "gpt", "value": str(count)}],
                    "metadata": {"dataset": "scanQA", "question_type": "count", "answers": [str(count)]}})
    tallest = max(room.objects, key=lambda o: o[2][2])[0]
    out.append({"id": f"{video}/scanqa/tallest", "video": video,
                "conversations": [{"from": "human", "value": "<image>\nWhat is the tallest object in the room?"},
                                  {"from": "gpt", "value": tallest}],
                "metadata": {"dataset": "scanQA", "question_type": "what", "answers": [tallest]}})
    return out


def gcot_samples(video: str, room, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """VSI-Bench-style distance questions: GCoT training samples (boxes in the stored augmented
    frame) and the matching evaluation records (ground truth in metres, frame-independent)."""
    data_source, scene_name = video.split("/", 1)
    train, evaluation = [], []
    pairs = [(room.objects[i], room.objects[i + 1]) for i in range(min(2, len(room.objects) - 1))]
    for k, ((a, alo, ahi), (b, blo, bhi)) in enumerate(pairs):
        question = f"What is the distance between the {a} and the {b} (in meters)?"
        aug = PointAugmentation.sample(rng)
        boxes = aug.apply_boxes_minmax(np.array([[*alo, *ahi], [*blo, *bhi]]))
        # Distance between centres is frame-dependent under anisotropic scale; the answer
        # quoted is the one in the frame the model sees (as the authors' GCoT data).
        ca, cb = (boxes[0, :3] + boxes[0, 3:]) / 2, (boxes[1, :3] + boxes[1, 3:]) / 2
        answer = f"{np.linalg.norm(ca - cb):.1f}"
        think = (f"I need the {a} and the {b}. {a} 1 <bbox>{format_box(boxes[0])}</bbox>, "
                 f"{b} 1 <bbox>{format_box(boxes[1])}</bbox>\nThe centres are {answer} m apart.")
        train.append({
            "id": f"{video}/gcot/{k}", "data_source": data_source, "scene_name": scene_name,
            "conversations": [{"from": "human", "value": f"<image>\n{load_prompts()['grounded_cot']}\n{question}\n"},
                              {"from": "gpt", "value": f"<think>{think}</think><answer>{answer}</answer>"}],
            "metadata": {"dataset": "vsibench_cot", "question_type": "object_abs_distance",
                         "data_augmentation": aug.to_config()}})
        true = np.linalg.norm((alo + ahi) / 2 - (blo + bhi) / 2)
        evaluation.append({"id": f"{video}/vsi/{k}", "dataset": data_source, "scene_name": scene_name,
                           "question_type": "object_abs_distance", "question": question, "options": [],
                           "ground_truth": f"{true:.1f}"})
    a, b = room.objects[0][0], room.objects[1][0]
    evaluation.append({"id": f"{video}/vsi/rel", "dataset": data_source, "scene_name": scene_name,
                       "question_type": "object_rel_distance",
                       "question": f"Which of these objects is closest to the {a}?",
                       "options": [f"A. {b}", "B. ceiling"], "ground_truth": "A"})
    return train, evaluation


def write_synthetic_dataset(root, n_scenes: int = 2, n_frames: int = 6, width: int = 64, height: int = 48,
                            seed: int = 0) -> dict[str, Path]:
    """Render `n_scenes` rooms and write scenes, sample files and mixtures under `root`.
    Returns the paths by name (see the module docstring)."""
    from gs_reasoner_ros.synthetic import synthetic_scene

    if n_scenes < 1 or n_frames < 1:
        raise ValueError(f"need at least one scene and one frame, got {n_scenes} scenes, {n_frames} frames")
    root = Path(root)
    rng = np.random.default_rng(seed)
    grounding, qa, gcot, vsi = [], [], [], []
    for s in range(n_scenes):
        scene, room = synthetic_scene(seed=seed + s, n_frames=n_frames, width=width, height=height)
        video = f"synthetic/scene{s:04d}"
        scene.save_processed(root / video)
        grounding += grounding_samples(video, room)
        qa += qa_samples(video, room)
        train, evaluation = gcot_samples(video, room, rng)
        gcot += train
        vsi += evaluation
    paths = {name: root / f"{name}.json" for name in ("grounding", "qa", "gcot", "vsibench")}
    for name, samples in zip(paths, (grounding, qa, gcot, vsi)):
        paths[name].write_text(json.dumps(samples, indent=1), encoding="utf-8")
    paths["pretrain"] = root / "pretrain.yaml"
    paths["pretrain"].write_text("datasets:\n  - json_path: grounding.json\n    sampling_strategy: \"first:90%\"\n")
    paths["finetune"] = root / "finetune.yaml"
    paths["finetune"].write_text(
        "datasets:\n  - json_path: grounding.json\n    sampling_strategy: \"end:10%\"\n"
        "  - json_path: qa.json\n    sampling_strategy: all\n"
        "  - json_path: gcot.json\n    sampling_strategy: all\n")
    paths["root"] = root
    return paths
