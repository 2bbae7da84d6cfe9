"""Benchmark metrics exactly as the official GS-Reasoner evaluation computes them.

Pure numpy, no model. Each benchmark has a per-sample scorer and an aggregator that returns
percentages (x100), so the runners, the saved-prediction scorer and the tests share one
definition. Deliberate replications of official quirks are marked "official:" with the file and
function they come from (GS-Reasoner = WU-CVGL/GS-Reasoner; its vendored lmms-eval task is
`llava/submodules/lmms_eval/tasks/vsibench/utils.py`). Where the official code raises on a
sample, the scorers raise SampleDropped: the sample leaves the averages and is counted.
ScanRefer / Multi3DRefer live in grounding.py, plain box helpers in boxes.py (re-exported here).
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Iterable, Sequence

import numpy as np

from gs_reasoner_ros.evaluation.boxes import (  # noqa: F401  (public names kept here)
    _hungarian_max, aabb_iou, box_from_center_size, iou_matrix, linear_sum_assignment_max,
    multi3drefer_f1, parse_box_groups, scanrefer_iou)
from gs_reasoner_ros.evaluation.dropped import SampleDropped
from gs_reasoner_ros.evaluation.grounding import (  # noqa: F401
    decode_box_groups, multi3drefer_official_f1, scanrefer_box3d_iou, scanrefer_official_iou)

# ---------------------------------------------------------------------------
# answer text
# ---------------------------------------------------------------------------


def extract_answer(text: str) -> str:
    """The answer text the official scores see: the generated text stripped (both official
    generation paths strip it: llava/eval/model_3dvqa.py eval_model and lmms_eval
    models/gs_reasoner.py generate_until), then everything after the last `<answer>` with every
    `</answer>` removed (the whole text without an `<answer>` tag).

    official quirk (model_3dvqa.py eval_model, vsibench utils.vsibench_cot_process_results): the
    part after `<answer>` is NOT stripped again, so `<answer> 3.5</answer>` gives " 3.5", which
    scores 0 on VSI-Bench (the first space-separated token is empty) and ScanQA (not verbatim).
    """
    return str(text or "").strip().split("<answer>")[-1].replace("</answer>", "")


# ---------------------------------------------------------------------------
# VSI-Bench
# ---------------------------------------------------------------------------

VSI_MCA_TASKS = (
    "object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
    "object_rel_distance", "route_planning", "obj_appearance_order",
)
VSI_NA_TASKS = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
VSI_REL_DIRECTION = VSI_MCA_TASKS[:3]

# official (vsibench utils.mean_relative_accuracy): np.linspace(0.5, 0.95,
# int((0.95 - 0.5) / 0.05 + 2)). In exact arithmetic that asks for 11 points, but (0.95 - 0.5) / 0.05 is 8.999999999999998 in binary floating point, so
# int() gives 10 and the thresholds are exactly 0.50, 0.55, ..., 0.95. Reproduced, not "fixed".
MRA_THRESHOLDS = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))


def fuzzy_matching(text: str) -> str:
    """official (vsibench utils.fuzzy_matching): the first token of split(' ') with trailing '.'
    removed; a leading space makes that token empty."""
    return str(text or "").split(" ")[0].rstrip(".").strip()


def to_float(text) -> float | None:
    """official (vsibench utils.to_float): float(text), None when that fails. "nan" and "inf"
    are numbers here, as there (they then fail every threshold)."""
    try:
        return float(text)
    except (TypeError, ValueError, OverflowError):
        return None


def mean_relative_accuracy(pred: float | None, target: float | None) -> float:
    """Share of thresholds t in MRA_THRESHOLDS with |pred - target| / target <= 1 - t.

    official (vsibench utils.abs_dist_norm, vsibench_cot_process_results):
    - an unparseable prediction or ground truth (None) makes `pred - target` a TypeError, which
      the official code catches and scores 0;
    - it divides by the SIGNED ground truth, so a negative ground truth passes every threshold;
    - a zero ground truth is a ZeroDivisionError the official code does not catch (the run
      crashes): SampleDropped here.
    """
    if pred is None or target is None:
        return 0.0
    if target == 0:
        raise SampleDropped("vsibench_zero_ground_truth",
                            "vsibench utils.abs_dist_norm divides by the ground truth (ZeroDivisionError)")
    rel = abs(pred - target) / target
    return float(np.mean(rel <= 1.0 - MRA_THRESHOLDS))


def vsibench_score(question_type: str, prediction: str, ground_truth) -> float:
    """One VSI-Bench sample in [0, 1] as vsibench utils.vsibench_cot_process_results scores it:
    case-insensitive equality with the ground truth (not stripped) for MCA tasks, MRA for
    numeric ones. An unknown question type raises ValueError there: SampleDropped here."""
    answer = fuzzy_matching(extract_answer(prediction))
    if question_type in VSI_MCA_TASKS:
        return 1.0 if answer.lower() == str(ground_truth).lower() else 0.0
    if question_type in VSI_NA_TASKS:
        return mean_relative_accuracy(to_float(answer), to_float(ground_truth))
    raise SampleDropped("vsibench_unknown_question_type",
                        f"{question_type!r} (vsibench utils.vsibench_cot_process_results raises ValueError)")


def vsibench_aggregate(records: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(question_type, score) pairs -> per-task means and `overall`, x100, as vsibench
    utils.vsibench_aggregate_results computes them.

    official: the three relative-direction subsets are merged into `object_rel_direction` as
    the unweighted (easy + medium + hard) / 3; `overall` is the unweighted mean of the task
    entries, summed in the official order (question types sorted, the merged entry last).
    official quirk: the merge only happens when `easy` is present, so without it the medium /
    hard subsets stay separate entries of `overall`; with `easy` but without one of the others
    the official code raises KeyError (no result at all): we average the subsets present.
    """
    per_type: dict[str, list[float]] = defaultdict(list)
    for question_type, score in records:
        per_type[question_type].append(float(score))
    tasks = {t: float(np.mean(per_type[t])) for t in sorted(per_type)}
    if VSI_REL_DIRECTION[0] in tasks:
        subsets = [tasks.pop(t) for t in VSI_REL_DIRECTION if t in tasks]
        tasks["object_rel_direction"] = sum(subsets) / (3.0 if len(subsets) == 3 else len(subsets))
    out = {t: v * 100.0 for t, v in sorted(tasks.items())}
    if tasks:
        out["overall"] = sum(tasks.values()) / len(tasks) * 100.0
    return out


# ---------------------------------------------------------------------------
# ScanRefer / Multi3DRefer aggregates (per-sample scores: grounding.py)
# ---------------------------------------------------------------------------


def scanrefer_aggregate(records: Iterable[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """(question_type, iou) -> {type and "all": {"acc@0.25", "acc@0.5", "n"}}, accuracies x100."""
    per_type: dict[str, list[float]] = defaultdict(list)
    for question_type, iou in records:
        per_type["all"].append(iou)
        per_type[str(question_type)].append(iou)
    return {t: {"acc@0.25": 100.0 * float(np.mean(np.asarray(v) >= 0.25)),
                "acc@0.5": 100.0 * float(np.mean(np.asarray(v) >= 0.5)), "n": len(v)}
            for t, v in per_type.items()}


def multi3drefer_aggregate(records: Iterable[tuple[str, tuple[float, float]]]) -> dict[str, dict[str, float]]:
    """(question_type, (f1@0.25, f1@0.5)) -> {type and "all": {"f1@0.25", "f1@0.5", "n"}} x100."""
    per_type: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for question_type, f1 in records:
        per_type["all"].append(f1)
        per_type[str(question_type)].append(f1)
    return {t: {"f1@0.25": 100.0 * float(np.mean([f[0] for f in v])),
                "f1@0.5": 100.0 * float(np.mean([f[1] for f in v])), "n": len(v)}
            for t, v in per_type.items()}


# ---------------------------------------------------------------------------
# ScanQA / SQA3D
# ---------------------------------------------------------------------------


def scanqa_exact_match(prediction: str, answers: Sequence[str]) -> float:
    """official (GS-Reasoner llava/eval/eval_scanqa.py main): 1 when the answer text is verbatim
    one of the reference answers (no normalisation, and extract_answer does not strip it)."""
    return 1.0 if extract_answer(prediction) in list(answers) else 0.0


_SQA3D_FIXES = [
    (r"\bletf\b", "left"), (r"\blet\b", "left"), (r"\btehre\b", "there"), (r"\brigth\b", "right"),
    (r"\brght\b", "right"), (r"\bbehine\b", "behind"), (r"\btv\b", "TV"), (r"\bchai\b", "chair"),
    (r"\bwasing\b", "washing"), (r"\bwaslked\b", "walked"), (r"\boclock\b", "o'clock"),
    (r"\bo'[ ]+clock\b", "o'clock"),
]
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                 "eighteen", "nineteen", "twenty"]


def sqa3d_clean_answer(text: str) -> str:
    """The SQA3D/LEO answer normalisation the authors apply to prediction and reference.

    Lower-case, whitespace trimmed/collapsed, characters other than letters, digits, `,'-:`
    and whitespace removed, listed typo fixes, 0-20 and 23 written as words ("none" -> "zero"),
    a digit glued to a word dropped ("mat2" -> "mat"), leading articles a/an/the removed
    before a word, "backwards" -> "backward". Note "tv" becomes "TV" after lower-casing
    (as in the original) and the digits of "2.5" become "two.five" only where word-bounded.
    """
    s = str(text or "").lower()
    s = re.sub(r"[ ]+$", "", s)
    s = re.sub(r"^[ ]+", "", s)
    s = re.sub(r" {2,}", " ", s)
    s = re.sub(r"\.[ ]{2,}", ". ", s)
    s = re.sub(r"[^a-zA-Z0-9,'\s\-:]+", "", s)
    s = s.replace("ç", "c").replace("\u2019", "'")
    for pattern, repl in _SQA3D_FIXES:
        s = re.sub(pattern, repl, s)
    s = re.sub(r"\b0\b", "zero", s)
    s = re.sub(r"\bnone\b", "zero", s)
    for value, word in enumerate(_NUMBER_WORDS[1:], start=1):
        s = re.sub(rf"\b{value}\b", word, s)
    s = re.sub(r"\b23\b", "twenty-three", s)
    s = re.sub(r"\b([a-zA-Z]+)([0-9])\b", r"\g<1>", s)
    for article in ("a", "an", "the"):
        s = re.sub(rf"\b{article}\b ([a-zA-Z]+)", r"\g<1>", s)
    return re.sub(r"\bbackwards\b", "backward", s)


def sqa3d_match(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(EM, refined EM) after sqa3d_clean_answer on both sides, by LEO's answer matching
    (embodied-generalist evaluator/sqa3d_eval.py, ScanQAEvaluator.answer_match).

    official quirks: the references are tried IN ORDER and the first one that equals the
    prediction, contains it or is contained in it (whitespace ignored) decides, so a prediction
    equal to the second reference but contained in the first is (0, 1); an empty prediction is
    contained in every reference, so it scores (0, 1). With the single reference GS-Reasoner
    uses (the conversation's answer), EM is eval_sqa3d.py's clean(pred) == clean(gt).
    """
    pred = sqa3d_clean_answer(extract_answer(prediction))
    squeezed = "".join(pred.split())
    for ref in (sqa3d_clean_answer(a) for a in answers):
        if pred == ref:
            return 1.0, 1.0
        ref_squeezed = "".join(ref.split())
        if squeezed in ref_squeezed or ref_squeezed in squeezed:
            return 0.0, 1.0
    return 0.0, 0.0


def exact_match_aggregate(records: Iterable[tuple[str, Sequence[float]]], names: Sequence[str]) -> dict:
    """(question_type, per-sample scores) -> {type and "all": {name: mean x100, "n"}}."""
    per_type: dict[str, list[Sequence[float]]] = defaultdict(list)
    for question_type, scores in records:
        per_type["all"].append(scores)
        per_type[str(question_type)].append(scores)
    out = {}
    for t, rows in per_type.items():
        arr = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(names))
        out[t] = {name: 100.0 * float(arr[:, k].mean()) for k, name in enumerate(names)}
        out[t]["n"] = len(rows)
    return out


def cider_d(references: dict[str, Sequence[str]], candidates: dict[str, str],
            n: int = 4, sigma: float = 6.0) -> tuple[float, dict[str, float]]:
    """CIDEr-D as the COCO caption toolkit computes it (the authors' ScanQA CIDEr), on
    whitespace tokens of the strings given (the authors pass untokenised text).

    Document frequencies come from the references of this evaluation set; per n-gram order
    the tf-idf vectors are clipped (min) against each reference, scaled by a Gaussian length
    penalty exp(-(len_c - len_r)^2 / (2 sigma^2)), averaged over references and orders, x10.
    Returns (corpus mean, per-key scores), not x100.
    """
    keys = list(references)
    if set(keys) != set(candidates):
        raise ValueError("CIDEr: references and candidates must have the same keys")
    if any(len(references[k]) == 0 for k in keys):
        raise ValueError("CIDEr: every sample needs at least one reference")

    def ngrams(sentence: str) -> Counter:
        words = sentence.split()
        return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))

    ref_counts = {k: [ngrams(r) for r in references[k]] for k in keys}
    doc_freq: Counter = Counter()
    for k in keys:
        doc_freq.update({g for counts in ref_counts[k] for g in counts})
    log_docs = math.log(float(len(keys)))

    def vector(counts: Counter):
        vec = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            order = len(gram) - 1
            value = float(tf) * (log_docs - math.log(max(1.0, doc_freq[gram])))
            vec[order][gram] = value
            norm[order] += value * value
            if order == 1:
                length += tf  # bigram count + 1 is the word count (the toolkit's quirk)
        return vec, [math.sqrt(x) for x in norm], length

    scores = {}
    for k in keys:
        vc, nc, lc = vector(ngrams(candidates[k]))
        total = np.zeros(n)
        for counts in ref_counts[k]:
            vr, nr, lr = vector(counts)
            penalty = math.exp(-((lc - lr) ** 2) / (2.0 * sigma ** 2))
            for order in range(n):
                val = sum(min(v, vr[order].get(g, 0.0)) * vr[order].get(g, 0.0) for g, v in vc[order].items())
                if nc[order] != 0 and nr[order] != 0:
                    val /= nc[order] * nr[order]
                total[order] += val * penalty
        scores[k] = float(np.mean(total) / len(ref_counts[k]) * 10.0)
    return (float(np.mean(list(scores.values()))) if scores else 0.0), scores
