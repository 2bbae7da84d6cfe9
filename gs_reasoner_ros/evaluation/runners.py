"""Benchmark runners: ask a Reasoner every question of a data file and score the answers.

Inputs, per task:
- scanrefer / multi3drefer / scanqa / sqa3d: samples in the GS-Reasoner-Data schema (the
  `*_val_llava_style.json` files); the question is the human turn without "<image>" (its
  leading newline kept, as the authors' eval scripts do), asked with the direct-answer prompt.
- vsibench: records with `dataset`, `scene_name`, `question_type`, `question`, `options`,
  `ground_truth` (the VSI-Bench rows); asked with the grounded chain-of-thought prompt.
Scenes are processed-data folders under data_root (`video`, or `dataset/scene_name`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from gs_reasoner_ros.evaluation import metrics as M
from gs_reasoner_ros.scene import Scene

TASKS = ("vsibench", "scanrefer", "multi3drefer", "scanqa", "sqa3d")


@dataclass
class EvalReport:
    task: str
    metrics: dict
    predictions: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"task": self.task, "n": len(self.predictions), "metrics": self.metrics}


def _question(sample: dict) -> str:
    turns = sample.get("conversations") or []
    if not turns or not isinstance(turns[0].get("value"), str):
        raise ValueError(f"sample {sample.get('id')!r} has no human turn")
    return turns[0]["value"].replace("<image>", "")


def _scene_folder(sample: dict, task: str) -> str:
    if task == "vsibench":
        return f"{sample['dataset']}/{sample['scene_name']}"
    return str(sample["video"])


def _center_size_boxes(boxes) -> list[np.ndarray]:
    return [M.box_from_center_size(b) for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 6)]


REQUIRED = {"vsibench": ("dataset", "scene_name", "question_type", "question", "ground_truth"),
            "scanrefer": ("video", "conversations", "metadata"), "multi3drefer": ("video", "conversations", "metadata"),
            "scanqa": ("video", "conversations"), "sqa3d": ("video", "conversations")}


def check_eval_sample(task: str, sample: dict) -> None:
    """ValueError naming the sample and the missing field."""
    missing = [k for k in REQUIRED[task] if k not in sample]
    meta = sample.get("metadata", {})
    if task in ("scanrefer", "multi3drefer") and not missing and not meta.get("object"):
        missing = ["metadata.object"]
    if task in ("scanqa", "sqa3d") and not missing and not meta.get("answers") and len(sample["conversations"]) < 2:
        missing = ["metadata.answers"]
    if missing:
        raise ValueError(f"{task} sample {sample.get('id')!r} lacks {', '.join(missing)}")


def score_sample(task: str, sample: dict, text: str) -> tuple[str, object, dict]:
    """(question_type, per-sample score, extra fields for the predictions file)."""
    meta = sample.get("metadata", {})
    if task == "vsibench":
        qtype = sample["question_type"]
        return qtype, M.vsibench_score(qtype, text, sample["ground_truth"]), {}
    qtype = str(meta.get("question_type", "all"))
    groups = M.parse_box_groups(text)
    if task == "scanrefer":
        target = meta.get("target_object_id")
        gt = None
        if target is not None:
            for obj in meta.get("object", []):
                if target in obj.get("object_id", []):
                    gt = obj["object_bbox"][obj["object_id"].index(target)]
                    break
        if gt is None:
            gt = meta["object"][0]["object_bbox"][0]
        iou = M.scanrefer_iou(groups, M.box_from_center_size(gt), best_of_groups=target is not None)
        return qtype, iou, {"iou": iou}
    if task == "multi3drefer":
        preds = groups[0][1] if groups else []
        f1 = M.multi3drefer_f1(preds, _center_size_boxes(meta["object"][0]["object_bbox"]))
        return qtype, f1, {"f1": f1}
    answers = meta.get("answers") or [sample["conversations"][1]["value"]]
    if task == "scanqa":
        return qtype, (M.scanqa_exact_match(text, answers),), {"answers": answers}
    return qtype, M.sqa3d_match(text, answers), {"answers": answers}


def aggregate(task: str, records: list[tuple[str, object]]) -> dict:
    if task == "vsibench":
        return M.vsibench_aggregate(records)
    if task == "scanrefer":
        return M.scanrefer_aggregate(records)
    if task == "multi3drefer":
        return M.multi3drefer_aggregate(records)
    if task == "scanqa":
        return M.exact_match_aggregate(records, ["em"])
    return M.exact_match_aggregate(records, ["em", "em_refined"])


def evaluate(task: str, samples: Iterable[dict], answer: Callable[[dict, str], str], progress=None) -> EvalReport:
    """Score `answer(sample, task) -> generated text` over the samples.

    ScanQA also gets CIDEr-D (the authors' score on the answer with a trailing "." removed)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    samples = list(samples)
    for sample in samples:
        check_eval_sample(task, sample)
    records, predictions = [], []
    for sample in samples if progress is None else progress(samples):
        text = answer(sample, task)
        qtype, score, extra = score_sample(task, sample, text)
        records.append((qtype, score))
        predictions.append({"id": sample.get("id"), "question_type": qtype, "text": text,
                            "answer": M.extract_answer(text), **extra})
    metrics = aggregate(task, records) if records else {}
    if task == "scanqa" and predictions:
        refs = {str(k): [str(a) for a in p["answers"]] for k, p in enumerate(predictions)}
        cands = {str(k): p["answer"].rstrip(".") for k, p in enumerate(predictions)}
        metrics["all"]["cider"] = 100.0 * M.cider_d(refs, cands)[0]
    return EvalReport(task, metrics, predictions)


class ReasonerAnswerer:
    """answer(sample, task) through a gs_reasoner_ros.reasoner.Reasoner, scenes from data_root
    (only the frames the model uses are read; the last scene is kept for the next question)."""

    def __init__(self, reasoner, data_root, num_frames: int = 32, max_new_tokens: int | None = None):
        self.reasoner = reasoner
        self.data_root = Path(data_root)
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self._scene = (None, None)

    def scene(self, key: str):

        if self._scene[0] != key:
            folder = self.data_root / key
            if not folder.is_dir():
                raise ValueError(f"scene folder {folder} does not exist")
            self._scene = (key, Scene.load_processed(folder, count=self.num_frames))
        return self._scene[1]

    def __call__(self, sample: dict, task: str) -> str:
        scene = self.scene(_scene_folder(sample, task))
        if task == "vsibench":
            result = self.reasoner.answer(scene, sample["question"], options=list(sample.get("options") or []),
                                          task="spatial", max_new_tokens=self.max_new_tokens)
        else:
            result = self.reasoner.answer(scene, _question(sample), task="ground" if task in ("scanrefer", "multi3drefer")
                                          else "qa", max_new_tokens=self.max_new_tokens)
        return result.text


def format_table(report: EvalReport) -> str:
    """A plain-text table: one row per question type (or task), one column per metric."""
    metrics = report.metrics
    if not metrics:
        return f"{report.task}: no samples"
    if all(isinstance(v, (int, float)) for v in metrics.values()):
        rows = [(k, {"score": v}) for k, v in metrics.items()]
    else:
        rows = sorted(metrics.items(), key=lambda kv: (kv[0] != "all", kv[0]))
    columns = [c for c in rows[0][1] if c != "n"] + (["n"] if "n" in rows[0][1] else [])
    width = max(len(r[0]) for r in rows + [("type", {})])
    lines = [f"{report.task} ({len(report.predictions)} samples)",
             "type".ljust(width) + "".join(f"{c:>12}" for c in columns)]
    for name, values in rows:
        cells = "".join(f"{values.get(c, float('nan')):>12.2f}" if c != "n" else f"{values.get(c, 0):>12d}"
                        for c in columns)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)
