"""Benchmark metrics as the GS-Reasoner authors compute them.

Pure numpy, no model. Each benchmark has a per-sample scorer and an aggregator that
returns percentages (x100), so the runners and the tests share one definition.
Deliberate replications of the authors' quirks are marked "authors:" below.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Iterable, Sequence

import numpy as np

# ---------------------------------------------------------------------------
# answer text
# ---------------------------------------------------------------------------

_BOX_GROUP = re.compile(r"([^\s,<>][^,<>]*?)\s+(\d+)\s+((?:<bbox>\([^)]*\)</bbox>)+)")
_BOX = re.compile(r"<bbox>\(([^)]*)\)</bbox>")


def extract_answer(text: str) -> str:
    """Text after the last `<answer>` with `</answer>` removed (the whole text if the
    model wrote no `<answer>` tag), stripped."""
    text = str(text or "")
    if "<answer>" in text:
        text = text.rsplit("<answer>", 1)[1]
    return text.replace("</answer>", "").strip()


def parse_box_groups(text: str) -> list[tuple[str, list[np.ndarray]]]:
    """`name count <bbox>(x1, y1, z1, x2, y2, z2)</bbox>...` groups in output order.

    Each box comes back as a (6,) [min xyz, max xyz] array. Boxes whose text does not hold
    six numbers are dropped (the authors' parser would crash on them); multi-word names are
    kept whole, unlike the authors' `\\w+`, which only matters for display.
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


# ---------------------------------------------------------------------------
# VSI-Bench
# ---------------------------------------------------------------------------

VSI_MCA_TASKS = (
    "object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
    "object_rel_distance", "route_planning", "obj_appearance_order",
)
VSI_NA_TASKS = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
VSI_REL_DIRECTION = VSI_MCA_TASKS[:3]

# authors: np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2)). In exact arithmetic that asks
# for 11 points, but (0.95 - 0.5) / 0.05 is 8.999999999999998 in binary floating point, so
# int() gives 10 and the thresholds are exactly 0.50, 0.55, ..., 0.95. Reproduced, not "fixed".
MRA_THRESHOLDS = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))


def fuzzy_matching(text: str) -> str:
    """authors: the first space-separated token with trailing '.' removed."""
    return str(text or "").split(" ")[0].rstrip(".").strip()


def to_float(text) -> float | None:
    """float(text), or None when it is not a number (scores 0)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def mean_relative_accuracy(pred: float | None, target: float) -> float:
    """Share of thresholds t in MRA_THRESHOLDS with |pred - target| / |target| <= 1 - t.

    None (unparseable) scores 0. A zero target scores 1 only for an exact 0 (the authors
    divide by it; inf/nan then fail every threshold except 0/0, which we also score 0).
    """
    if pred is None:
        return 0.0
    target = float(target)
    if target == 0.0:
        rel = 0.0 if pred == 0.0 else math.inf
    else:
        rel = abs(pred - target) / abs(target)
    return float(np.mean(rel <= 1.0 - MRA_THRESHOLDS))


def vsibench_score(question_type: str, prediction: str, ground_truth) -> float:
    """One VSI-Bench sample in [0, 1]: exact option match for MCA tasks, MRA for numeric ones."""
    answer = fuzzy_matching(extract_answer(prediction))
    if question_type in VSI_MCA_TASKS:
        return 1.0 if answer.lower() == str(ground_truth).strip().lower() else 0.0
    if question_type in VSI_NA_TASKS:
        target = to_float(ground_truth)
        if target is None:
            raise ValueError(f"VSI-Bench {question_type}: ground truth {ground_truth!r} is not a number")
        return mean_relative_accuracy(to_float(answer), target)
    raise ValueError(f"unknown VSI-Bench question_type {question_type!r}; "
                     f"expected one of {VSI_MCA_TASKS + VSI_NA_TASKS}")


def vsibench_aggregate(records: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(question_type, score) pairs -> per-task means, with the three relative-direction
    subsets averaged (unweighted) into `object_rel_direction`, and `overall` = unweighted
    mean of the task scores present (8 on the full benchmark). All x100."""
    per_type: dict[str, list[float]] = defaultdict(list)
    for question_type, score in records:
        per_type[question_type].append(float(score))
    tasks = {t: float(np.mean(v)) for t, v in per_type.items() if t not in VSI_REL_DIRECTION}
    subsets = [float(np.mean(per_type[t])) for t in VSI_REL_DIRECTION if per_type.get(t)]
    if subsets:
        tasks["object_rel_direction"] = float(np.mean(subsets))
    out = {t: 100.0 * v for t, v in sorted(tasks.items())}
    if tasks:
        out["overall"] = 100.0 * float(np.mean(list(tasks.values())))
    return out


# ---------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------


def box_from_center_size(box) -> np.ndarray:
    """[cx, cy, cz, dx, dy, dz] (the datasets' metadata form) -> [min xyz, max xyz]."""
    b = np.asarray(box, dtype=np.float64).reshape(6)
    half = np.abs(b[3:]) / 2.0
    return np.concatenate([b[:3] - half, b[:3] + half])


def aabb_iou(a, b) -> float:
    """IoU of two axis-aligned boxes given as [min xyz, max xyz] (corners in either order)."""
    a = np.asarray(a, dtype=np.float64).reshape(2, 3)
    b = np.asarray(b, dtype=np.float64).reshape(2, 3)
    a_lo, a_hi = a.min(0), a.max(0)
    b_lo, b_hi = b.min(0), b.max(0)
    inter = np.prod(np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0.0, None))
    union = np.prod(a_hi - a_lo) + np.prod(b_hi - b_lo) - inter
    return float(inter / union) if union > 0 else 0.0


def iou_matrix(preds: Sequence, gts: Sequence) -> np.ndarray:
    """Pairwise aabb_iou, shape (len(preds), len(gts))."""
    m = np.zeros((len(preds), len(gts)))
    for i, p in enumerate(preds):
        for j, g in enumerate(gts):
            m[i, j] = aabb_iou(p, g)
    return m


# ---------------------------------------------------------------------------
# ScanRefer (also SR3D / NR3D)
# ---------------------------------------------------------------------------


def scanrefer_iou(groups: list[tuple[str, list[np.ndarray]]], gt_box, best_of_groups: bool) -> float:
    """IoU of the prediction the authors score against the GT box ([min, max]).

    authors: without `target_object_id` the first box of the first group is scored; with it,
    the best IoU among the *first box of every group* (an oracle-style choice that favours
    answers naming several objects). No parsed box scores 0 (the authors' script crashes).
    """
    if not groups:
        return 0.0
    if best_of_groups:
        return max(aabb_iou(boxes[0], gt_box) for _, boxes in groups)
    return aabb_iou(groups[0][1][0], gt_box)


def scanrefer_aggregate(records: Iterable[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """(question_type, iou) -> {type and "all": {"acc@0.25", "acc@0.5", "n"}}, accuracies x100."""
    per_type: dict[str, list[float]] = defaultdict(list)
    for question_type, iou in records:
        per_type["all"].append(iou)
        per_type[str(question_type)].append(iou)
    return {t: {"acc@0.25": 100.0 * float(np.mean(np.asarray(v) >= 0.25)),
                "acc@0.5": 100.0 * float(np.mean(np.asarray(v) >= 0.5)), "n": len(v)}
            for t, v in per_type.items()}


# ---------------------------------------------------------------------------
# Multi3DRefer
# ---------------------------------------------------------------------------


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
    """(F1@0.25, F1@0.5) of one query, boxes as [min, max].

    authors: one matching that maximises the summed IoU, then a matched pair is a true
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
    """authors: 1 when the answer text is verbatim one of the reference answers (no normalisation)."""
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
    """(EM, refined EM) after sqa3d_clean_answer on both sides. Refined EM also accepts a
    prediction contained in a reference or vice versa, ignoring whitespace. Empty scores 0."""
    pred = sqa3d_clean_answer(extract_answer(prediction))
    refs = [sqa3d_clean_answer(a) for a in answers]
    if not pred:
        return 0.0, 0.0
    if pred in refs:
        return 1.0, 1.0
    squeezed = "".join(pred.split())
    for ref in refs:
        r = "".join(ref.split())
        if squeezed in r or r in squeezed:
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
