"""Benchmark runners: ask a Reasoner every question of a data file and score the answers.

Inputs, per task:
- scanrefer / multi3drefer / scanqa / sqa3d: samples in the GS-Reasoner-Data schema (the
  `*_val_llava_style.json` files); the question is the human turn without "<image>" (its
  leading newline kept, as the authors' eval scripts do), asked with the direct-answer prompt.
- vsibench: records with `dataset`, `scene_name`, `question_type`, `question`, `options`,
  `ground_truth` (the VSI-Bench rows); asked with the grounded chain-of-thought prompt.
Scenes are processed-data folders under data_root (`video`, or `dataset/scene_name`).

Scores are the official ones (see metrics.py / grounding.py). A sample the official code would
raise on or skip is left out of the averages and counted in EvalReport.dropped by reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from gs_reasoner_ros.evaluation import metrics as M
from gs_reasoner_ros.evaluation.dropped import SampleDropped
from gs_reasoner_ros.scene import Scene

TASKS = ("vsibench", "scanrefer", "multi3drefer", "scanqa", "sqa3d")


@dataclass
class EvalReport:
    task: str
    metrics: dict
    predictions: list[dict] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> samples left out of the averages

    def to_json(self) -> dict:
        return {"task": self.task, "n": len(self.predictions), "metrics": self.metrics, "dropped": self.dropped}


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
            "scanqa": ("video", "conversations", "metadata"), "sqa3d": ("video", "conversations")}


def check_eval_sample(task: str, sample: dict) -> None:
    """ValueError naming the sample and the missing field."""
    missing = [k for k in REQUIRED[task] if k not in sample]
    meta = sample.get("metadata", {})
    if task in ("scanrefer", "multi3drefer") and not missing and not meta.get("object"):
        missing = ["metadata.object"]
    # official references: ScanQA's metadata.answers (eval_scanqa.py idx2labels), SQA3D's
    # conversation answer (model_3dvqa.py gt_response = conversations[1]["value"])
    if task == "scanqa" and not missing and not meta.get("answers"):
        missing = ["metadata.answers"]
    if task == "sqa3d" and not missing and len(sample["conversations"]) < 2:
        missing = ["the answer turn (conversations[1])"]
    if missing:
        raise ValueError(f"{task} sample {sample.get('id')!r} lacks {', '.join(missing)}")


def question_type(task: str, sample: dict) -> str:
    if task == "vsibench":
        return str(sample["question_type"])
    return str(sample.get("metadata", {}).get("question_type", "all"))


def _target_box(meta: dict, target) -> list:
    """model_singlerefer.py: the box of `target_object_id` in the first object listing it."""
    for obj in meta.get("object", []):
        if target in obj.get("object_id", []):
            return obj["object_bbox"][obj["object_id"].index(target)]
    # official: gt_response is then never assigned for this sample (NameError, or the previous
    # sample's box left in the variable); either way not a score we can reproduce.
    raise SampleDropped("target_not_found", f"target_object_id {target!r} is in no metadata object")


def _first_box(meta: dict) -> list:
    """model_singlerefer.py without a target: metadata.object[0].object_bbox[0]."""
    boxes = meta["object"][0].get("object_bbox") or []
    if not boxes:  # official: IndexError, the run stops (a zero-target Multi3DRefer row, say)
        raise SampleDropped("no_gt_box", "metadata.object[0].object_bbox is empty (model_singlerefer.py IndexError)")
    return boxes[0]


def score_sample(task: str, sample: dict, text: str) -> tuple[str, object, dict]:
    """(question_type, per-sample score, extra fields for the predictions file: the named
    `scores` and the task's own fields). Raises SampleDropped where the official code raises."""
    meta = sample.get("metadata", {})
    qtype = question_type(task, sample)
    if task == "vsibench":
        score = M.vsibench_score(qtype, text, sample["ground_truth"])
        return qtype, score, {"scores": {"score": score}}
    if task == "scanrefer":
        groups = M.decode_box_groups(text)
        target = meta.get("target_object_id")
        gt = _target_box(meta, target) if target is not None else _first_box(meta)
        iou = M.scanrefer_official_iou(groups, gt, has_target_id=target is not None)
        return qtype, iou, {"iou": iou, "scores": {"iou": iou, "acc@0.25": iou >= 0.25, "acc@0.5": iou >= 0.5}}
    if task == "multi3drefer":
        f1 = M.multi3drefer_official_f1(M.decode_box_groups(text), meta["object"][0]["object_bbox"])
        return qtype, f1, {"f1": f1, "scores": {"f1@0.25": f1[0], "f1@0.5": f1[1]}}
    if task == "scanqa":
        answers = list(meta["answers"])
        em = M.scanqa_exact_match(text, answers)
        return qtype, (em,), {"answers": answers, "scores": {"em": em}}
    answers = [sample["conversations"][1]["value"]]
    em, refined = M.sqa3d_match(text, answers)
    return qtype, (em, refined), {"answers": answers, "scores": {"em": em, "em_refined": refined}}


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


def _check_task(task: str, samples: list[dict]) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    for sample in samples:
        check_eval_sample(task, sample)


def evaluate(task: str, samples: Iterable[dict], answer: Callable[[dict, str], str], progress=None) -> EvalReport:
    """Score `answer(sample, task) -> generated text` over the samples (see score_texts)."""
    samples = list(samples)
    _check_task(task, samples)
    texts = [answer(sample, task) for sample in (samples if progress is None else progress(samples))]
    return score_texts(task, samples, texts)


def score_texts(task: str, samples: Sequence[dict], texts: Sequence[str],
                indices: Sequence[int] | None = None) -> EvalReport:
    """Official scores of generated texts, one per sample; `indices` are the samples' positions
    in the benchmark file (default 0..n-1), written to the predictions.

    ScanQA also gets CIDEr-D (eval_scanqa.py: on the answer with trailing "." removed).
    Not reproduced: eval_scanqa.py first rewrites every sample id's last `_N` to `_0` and keys
    CIDEr (and the EM references) by that id, which depends on the release's id scheme.
    """
    samples = list(samples)
    _check_task(task, samples)
    if len(texts) != len(samples):
        raise ValueError(f"{len(texts)} texts for {len(samples)} samples")
    indices = list(range(len(samples))) if indices is None else list(indices)
    records, predictions, dropped = [], [], Counter()
    for index, sample, text in zip(indices, samples, texts):
        row = {"id": sample.get("id"), "index": index, "question_type": question_type(task, sample),
               "text": text, "answer": M.extract_answer(text)}
        try:
            qtype, score, extra = score_sample(task, sample, text)
        except SampleDropped as err:
            dropped[err.reason] += 1
            row.update(dropped=err.reason, dropped_detail=str(err))
        else:
            records.append((qtype, score))
            row.update(extra)
        predictions.append(row)
    metrics = aggregate(task, records) if records else {}
    scored = [p for p in predictions if "dropped" not in p]
    if task == "scanqa" and scored:
        refs = {str(k): [str(a) for a in p["answers"]] for k, p in enumerate(scored)}
        cands = {str(k): p["answer"].rstrip(".") for k, p in enumerate(scored)}
        metrics["all"]["cider"] = 100.0 * M.cider_d(refs, cands)[0]
    return EvalReport(task, metrics, predictions, dict(sorted(dropped.items())))


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
        return f"{report.task}: no samples scored" + _dropped_line(report)
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
    return "\n".join(lines) + _dropped_line(report)


def _dropped_line(report: EvalReport) -> str:
    if not report.dropped:
        return ""
    reasons = ", ".join(f"{reason} {count}" for reason, count in report.dropped.items())
    return (f"\ndropped (the official code raises on or skips them; not in the averages): "
            f"{sum(report.dropped.values())} ({reasons})")
