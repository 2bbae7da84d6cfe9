"""Benchmark metrics against hand-computed values and brute-force references."""
import itertools

import numpy as np
import pytest

from gs_reasoner_ros.evaluation import metrics as M


# ---- VSI-Bench ------------------------------------------------------------------

def test_mra_thresholds_are_the_authors_ten():
    assert len(M.MRA_THRESHOLDS) == 10
    np.testing.assert_allclose(M.MRA_THRESHOLDS, 0.5 + 0.05 * np.arange(10))


@pytest.mark.parametrize("pred,expected", [
    (10.0, 1.0),   # exact
    (12.2, 0.6),   # rel 0.22 passes t <= 0.78: 0.50..0.75 = 6 of 10
    (7.8, 0.6),    # symmetric
    (12.0, 0.6),   # rel 0.2 fails t = 0.80: 1 - 0.8 is 0.19999999999999996 in binary (authors' numerics)
    (11.2, 0.8),   # rel 0.12: 0.50..0.85
    (15.0, 0.1),   # rel 0.5 passes only t = 0.50 (<=)
    (16.0, 0.0),
    (9.5, 1.0),    # rel 0.05 passes even t = 0.95 (1 - 0.95 rounds above 0.05)
    (None, 0.0),   # unparseable
])
def test_mean_relative_accuracy_hand_values(pred, expected):
    assert M.mean_relative_accuracy(pred, 10.0) == pytest.approx(expected)


def test_mra_zero_target_is_dropped_as_the_official_division_raises():
    # official abs_dist_norm: abs(pred - 0) / 0 -> ZeroDivisionError, even for pred 0
    for pred in (0.0, 0.1):
        with pytest.raises(M.SampleDropped, match="vsibench_zero_ground_truth"):
            M.mean_relative_accuracy(pred, 0.0)
    # an unparseable prediction fails first (None - 0 is the TypeError the official code catches): 0
    assert M.mean_relative_accuracy(None, 0.0) == 0.0


@pytest.mark.parametrize("text,truth,expected", [
    ("<think>the sofa is left</think><answer>B. left</answer>", "B", 1.0),
    ("<answer>c.</answer>", "C", 1.0),             # trailing '.' stripped, case-insensitive
    ("<answer>The answer is B</answer>", "B", 0.0),  # first token only
    ("A", "A", 1.0),                                # no tags: whole text
    ("", "A", 0.0),
])
def test_vsibench_multiple_choice(text, truth, expected):
    assert M.vsibench_score("object_rel_distance", text, truth) == expected


def test_vsibench_numeric_parsing():
    # 4 vs 5: relative error 0.2 -> 0.50..0.75 pass (see the float note above)
    assert M.vsibench_score("object_counting", "<answer>4</answer>", "5") == pytest.approx(0.6)
    assert M.vsibench_score("object_abs_distance", "<answer>2.0 m.</answer>", 2.0) == 1.0
    assert M.vsibench_score("room_size_estimation", "<answer>about 20</answer>", 20) == 0.0
    assert M.vsibench_score("object_size_estimation", "no answer tag at all", 20) == 0.0


def test_vsibench_bad_input_as_official():
    # official vsibench_cot_process_results raises ValueError on an unknown type: dropped here
    with pytest.raises(M.SampleDropped, match="vsibench_unknown_question_type"):
        M.vsibench_score("object_colour", "A", "A")
    # a non-numeric ground truth: to_float -> None, 3.0 - None is a TypeError, caught -> 0
    assert M.vsibench_score("object_counting", "3", "three") == 0.0


def test_vsibench_aggregate_merges_rel_direction_unweighted():
    records = [("object_rel_direction_easy", 1.0), ("object_rel_direction_easy", 0.0),   # 0.5
               ("object_rel_direction_medium", 1.0),                                       # 1.0
               ("object_rel_direction_hard", 0.0)] * 1 + [("object_rel_direction_hard", 0.0)] * 2
    records += [("object_counting", 0.7), ("route_planning", 1.0), ("route_planning", 0.0)]
    out = M.vsibench_aggregate(records)
    assert out["object_rel_direction"] == pytest.approx(50.0)  # mean of 0.5, 1.0, 0.0
    assert "object_rel_direction_easy" not in out
    assert out["object_counting"] == pytest.approx(70.0)
    assert out["route_planning"] == pytest.approx(50.0)
    assert out["overall"] == pytest.approx((50.0 + 70.0 + 50.0) / 3)


# ---- boxes and ScanRefer ----------------------------------------------------------

def test_parse_box_groups():
    text = ("<think></think><answer>brown chair 2 <bbox>(0.0000, 0.0000, 0.0000, 1.0000, 1.0000, 1.0000)</bbox>"
            "<bbox>(2, 0, 0, 3, 1, 1)</bbox>, table 1 <bbox>(-1, -1, 0, 1, 1, 0.75)</bbox></answer>")
    groups = M.parse_box_groups(text)
    assert [g[0] for g in groups] == ["brown chair", "table"]
    assert len(groups[0][1]) == 2
    np.testing.assert_allclose(groups[1][1][0], [-1, -1, 0, 1, 1, 0.75])
    assert M.parse_box_groups("<answer><bbox></bbox></answer>") == []
    assert M.parse_box_groups("chair 1 <bbox>(1, 2, 3)</bbox>") == []  # five numbers short


def test_aabb_iou_hand_values():
    unit = [0, 0, 0, 1, 1, 1]
    assert M.aabb_iou(unit, unit) == pytest.approx(1.0)
    assert M.aabb_iou(unit, [0.5, 0, 0, 1.5, 1, 1]) == pytest.approx(0.5 / 1.5)
    assert M.aabb_iou(unit, [0, 0, 0, 2, 2, 2]) == pytest.approx(1 / 8)
    assert M.aabb_iou(unit, [2, 2, 2, 3, 3, 3]) == 0.0
    assert M.aabb_iou(unit, [1, 1, 1, 0, 0, 0]) == pytest.approx(1.0)  # corner order free
    np.testing.assert_allclose(M.box_from_center_size([1, 2, 3, 2, 4, 6]), [0, 0, 0, 2, 4, 6])


def test_scanrefer_selection():
    gt = [0, 0, 0, 1, 1, 1]
    groups = [("chair", [np.array([5, 5, 5, 6, 6, 6.]), np.array(gt, float)]),
              ("table", [np.array([0.5, 0, 0, 1.5, 1, 1])])]
    assert M.scanrefer_iou(groups, gt, best_of_groups=False) == 0.0
    # best among the FIRST box of each group: the exact second chair box is not looked at
    assert M.scanrefer_iou(groups, gt, best_of_groups=True) == pytest.approx(1 / 3)
    assert M.scanrefer_iou([], gt, best_of_groups=True) == 0.0


def test_scanrefer_aggregate():
    out = M.scanrefer_aggregate([("unique", 0.6), ("unique", 0.3), ("multiple", 0.1), ("multiple", 0.5)])
    assert out["all"]["acc@0.25"] == pytest.approx(75.0)
    assert out["all"]["acc@0.5"] == pytest.approx(50.0)
    assert out["unique"] == {"acc@0.25": 100.0, "acc@0.5": 50.0, "n": 2}
    assert out["multiple"]["acc@0.25"] == pytest.approx(50.0)


# ---- Multi3DRefer -----------------------------------------------------------------

def _brute_force_max(w):
    m, n = w.shape
    if m <= n:
        return max(sum(w[i, p[i]] for i in range(m)) for p in itertools.permutations(range(n), m))
    return max(sum(w[p[j], j] for j in range(n)) for p in itertools.permutations(range(m), n))


def test_hungarian_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(150):
        m, n = (int(x) for x in rng.integers(1, 6, 2))
        w = rng.random((m, n))
        if trial % 3 == 0:
            w = np.round(w, 1)  # ties
        pairs = M._hungarian_max(w)
        assert len(pairs) == min(m, n)
        assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})
        assert sum(w[i, j] for i, j in pairs) == pytest.approx(_brute_force_max(w))


def test_multi3drefer_f1_hand_values():
    a, b = [0, 0, 0, 1, 1, 1], [2, 0, 0, 3, 1, 1]
    preds = [[0.5, 0, 0, 1.5, 1, 1], b, [9, 9, 9, 10, 10, 10]]  # IoU 1/3 with a, 1 with b, 0
    f25, f50 = M.multi3drefer_f1(preds, [a, b])
    assert f25 == pytest.approx(2 * 2 / 5)
    assert f50 == pytest.approx(2 * 1 / 5)
    assert M.multi3drefer_f1([], []) == (1.0, 1.0)
    assert M.multi3drefer_f1([], [a]) == (0.0, 0.0)
    assert M.multi3drefer_f1([a], []) == (0.0, 0.0)


def test_multi3drefer_uses_sum_maximising_matching():
    # Greedy would pair p0-g0 (0.45) and leave p1-g1 at 0; the authors' matching maximises
    # the sum instead: p0-g1 (0.3) + p1-g0 (0.4) = 0.7, so two pairs pass IoU 0.25.
    w = np.array([[0.45, 0.3], [0.4, 0.0]])
    assert sorted(M._hungarian_max(w)) == [(0, 1), (1, 0)]


def test_multi3drefer_aggregate():
    out = M.multi3drefer_aggregate([("zt_w_d", (1.0, 1.0)), ("mt", (0.5, 0.0))])
    assert out["all"] == {"f1@0.25": 75.0, "f1@0.5": 50.0, "n": 2}


# ---- ScanQA / SQA3D ---------------------------------------------------------------

def test_scanqa_exact_match_is_verbatim():
    answers = ["brown chair", "chair"]
    assert M.scanqa_exact_match("<think></think><answer>chair</answer>", answers) == 1.0
    assert M.scanqa_exact_match("<answer>Chair</answer>", answers) == 0.0
    assert M.scanqa_exact_match("", answers) == 0.0


@pytest.mark.parametrize("raw,clean", [
    ("The TV.", "TV"),
    ("2 chairs", "two chairs"),
    ("Letf", "left"),
    ("  a   table ", "table"),
    ("none", "zero"),
    ("mat2", "mat"),
    ("walk backwards", "walk backward"),
    ("23", "twenty-three"),
    ("it's 5 o clock!", "it's five o clock"),
])
def test_sqa3d_clean_answer(raw, clean):
    assert M.sqa3d_clean_answer(raw) == clean


def test_sqa3d_match():
    assert M.sqa3d_match("<answer>the tv</answer>", ["TV"]) == (1.0, 1.0)
    assert M.sqa3d_match("<answer>2</answer>", ["two"]) == (1.0, 1.0)
    assert M.sqa3d_match("<answer>brown chair</answer>", ["chair"]) == (0.0, 1.0)
    assert M.sqa3d_match("<answer>table</answer>", ["chair"]) == (0.0, 0.0)
    # empty after cleaning: "" is contained in every reference -> LEO counts it refined-correct
    assert M.sqa3d_match("<answer>!!!</answer>", ["chair"]) == (0.0, 1.0)


def test_exact_match_aggregate():
    out = M.exact_match_aggregate([("what", (1.0, 1.0)), ("is", (0.0, 1.0))], ["em", "em_refined"])
    assert out["all"] == {"em": 50.0, "em_refined": 100.0, "n": 2}
    assert out["is"]["em"] == 0.0


def test_cider_hand_value():
    # Two samples, one unigram each: df = 1, idf = log 2; a matching unigram gives
    # cosine 1 in order 1 and 0 in orders 2-4 -> mean 0.25, x10 = 2.5.
    refs = {"a": ["chair"], "b": ["table"]}
    score, per = M.cider_d(refs, {"a": "chair", "b": "table"})
    assert per == {"a": pytest.approx(2.5), "b": pytest.approx(2.5)}
    score, per = M.cider_d(refs, {"a": "chair", "b": "chair"})
    assert per["b"] == 0.0 and score == pytest.approx(1.25)
    with pytest.raises(ValueError, match="same keys"):
        M.cider_d(refs, {"a": "chair"})


def test_cider_matches_coco_toolkit_when_installed():
    cider = pytest.importorskip("pycocoevalcap.cider.cider", reason="pycocoevalcap not installed")
    rng = np.random.default_rng(1)
    words = "the a chair table brown two left right on under sofa tv bed near wall".split()
    refs, cands = {}, {}
    for i in range(20):
        refs[str(i)] = [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(rng.integers(1, 4))]
        cands[str(i)] = " ".join(rng.choice(words, rng.integers(1, 6)))
    expected, _ = cider.Cider().compute_score(refs, {k: [v] for k, v in cands.items()})
    assert M.cider_d(refs, cands)[0] == pytest.approx(expected)
