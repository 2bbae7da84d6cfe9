"""Official scores of saved predictions (`gs-reasoner eval --score`): no model is loaded.

The predictions are the JSON Lines `gs-reasoner eval --predictions` writes; each line needs the
raw generated `text` and either `index` (the sample's position in the benchmark file) or `id`
(unique in the benchmark file). Other fields (scores from the run that wrote them) are ignored:
everything is scored again from the text.
"""
from __future__ import annotations

import json
from pathlib import Path

from gs_reasoner_ros.evaluation.runners import EvalReport, score_texts


def read_predictions(path) -> list[dict]:
    """The records of a JSON Lines file (blank lines skipped); ValueError naming the line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{number}: a prediction needs the generated `text` (a string)")
            if record.get("index") is None and record.get("id") is None:
                raise ValueError(f"{path}:{number}: a prediction needs `index` or `id` to find its sample")
            records.append(record)
    return records


def _sample_index(record: dict, samples: list[dict], by_id: dict) -> int:
    """Position of the prediction's sample: `index` (checked against `id` when both are there),
    else the unique sample with that `id`."""
    if record.get("index") is not None:
        index = record["index"]
        if not isinstance(index, int) or not 0 <= index < len(samples):
            raise ValueError(f"prediction index {index!r} is outside the benchmark file (0..{len(samples) - 1})")
        if record.get("id") is not None and samples[index].get("id") != record["id"]:
            raise ValueError(f"prediction {record['id']!r} has index {index}, where the benchmark file has "
                             f"{samples[index].get('id')!r}: predictions of another file?")
        return index
    found = by_id.get(record["id"])
    if found is None:
        raise ValueError(f"prediction id {record['id']!r} is not in the benchmark file")
    if found == -1:
        raise ValueError(f"id {record['id']!r} is not unique in the benchmark file: give `index`")
    return found


def score_predictions(task: str, samples: list[dict], records: list[dict]) -> EvalReport:
    """EvalReport of the predictions, in the predictions' order (each sample at most once)."""
    by_id: dict = {}
    for k, sample in enumerate(samples):
        key = sample.get("id")
        by_id[key] = -1 if key in by_id else k
    indices = [_sample_index(r, samples, by_id) for r in records]
    if len(set(indices)) != len(indices):
        raise ValueError("a sample has more than one prediction")
    return score_texts(task, [samples[k] for k in indices], [r["text"] for r in records], indices)


def write_per_sample(path, report: EvalReport) -> None:
    """One JSON line per sample: id, index, question_type, the extracted answer and its official
    scores (or `dropped` with the reason)."""
    keys = ("id", "index", "question_type", "answer", "scores", "dropped", "dropped_detail")
    with open(Path(path), "w", encoding="utf-8") as f:
        for row in report.predictions:
            f.write(json.dumps({k: row[k] for k in keys if k in row}, default=float) + "\n")
