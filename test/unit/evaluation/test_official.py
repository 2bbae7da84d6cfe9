"""Hand-made cases for every official-code quirk of issue 16, each with the official result
worked out by hand from the official code (file/function named in the comment)."""
import numpy as np
import pytest

from gs_reasoner_ros.evaluation import metrics as M
from gs_reasoner_ros.evaluation import runners as R

GT = [0, 0, 0, 2, 2, 2]  # centre/size: the box -1..1 on every axis, volume 8


def _bbox(*values):
    return "<bbox>(" + ", ".join(str(v) for v in values) + ")</bbox>"


def _grounding(text_box_gt=GT, target=None, qtype="unique", boxes=None):
    meta = {"question_type": qtype, "object": [{"object_id": [7], "object_bbox": boxes or [text_box_gt]}]}
    if target is not None:
        meta["target_object_id"] = target
    return {"id": "s", "video": "v", "conversations": [{"from": "human", "value": "q"}], "metadata": meta}


def _score(task, sample, text):
    return R.score_sample(task, sample, text)[1]


# ---- ScanRefer ------------------------------------------------------------------------------

def test_scanrefer_exact_threshold_iou_is_a_miss():
    # pred -1..1 x -1..1 x -1..3 (volume 16) holds the GT: inter 8, union 16, IoU exactly 0.5.
    # box_utils.box3d_iou: 8 / (16 + 1e-8) < 0.5 -> miss at 0.5, hit at 0.25.
    iou = _score("scanrefer", _grounding(), "<answer>chair 1 " + _bbox(-1, -1, -1, 1, 1, 3) + "</answer>")
    assert iou == 8 / (16 + 1e-8) and iou < 0.5
    # z up to 7: volume 32, IoU exactly 0.25 -> 8 / (32 + 1e-8) < 0.25 -> miss at 0.25 too.
    iou = _score("scanrefer", _grounding(), "chair 1 " + _bbox(-1, -1, -1, 1, 1, 7))
    assert iou == 8 / (32 + 1e-8) and iou < 0.25
    out = M.scanrefer_aggregate([("unique", iou)])
    assert out["all"]["acc@0.25"] == 0.0


def test_scanrefer_tiny_box_is_scored_down_by_the_epsilon():
    # a 1 mm cube predicted exactly: inter = union = 1e-9, official IoU 1e-9 / (1e-9 + 1e-8) = 1/11
    gt = [0, 0, 0, 0.001, 0.001, 0.001]
    iou = _score("scanrefer", _grounding(gt), "cube 1 " + _bbox(-0.0005, -0.0005, -0.0005, 0.0005, 0.0005, 0.0005))
    assert iou == pytest.approx(1 / 11, rel=1e-6)


def test_scanrefer_target_id_picks_the_box_by_centre_size_iou():
    # With target_object_id, model_singlerefer.py keeps the first box of each group with the
    # best utils_3d.compute_3d_iou. The chair box is written max-corner first: centre 0, size -2;
    # compute_3d_iou takes x_min = max(0 - (-2)/2, -1) = 1 > x_max = min(0 + (-2)/2, 1) = -1 -> 0.
    # The table box 0..2 x -1..1 x -1..1: inter 4, union 12 -> 1/3, so the table is kept and
    # box3d_iou scores it 4 / (12 + 1e-8): a hit at 0.25, a miss at 0.5 (the chair would be 1.0).
    text = "chair 1 " + _bbox(1, 1, 1, -1, -1, -1) + ", table 1 " + _bbox(0, -1, -1, 2, 1, 1)
    assert _score("scanrefer", _grounding(target=7), text) == 4 / (12 + 1e-8)
    # without target_object_id the first box of the first group is scored, corners sorted by
    # box_utils (min/max over the corners): the chair, IoU 8 / (8 + 8 - 8 + 1e-8)
    assert _score("scanrefer", _grounding(), text) == 8 / (8 + 1e-8)


@pytest.mark.parametrize("text", [
    "chair: 1 " + _bbox(-1, -1, -1, 1, 1, 1),        # `\w+` then whitespace: ':' breaks it
    "chair (left) 1 " + _bbox(-1, -1, -1, 1, 1, 1),  # `left)` is no \w+ followed by whitespace
    "chair " + _bbox(-1, -1, -1, 1, 1, 1),           # no count
    "<answer>no idea</answer>",
])
def test_scanrefer_answer_without_an_official_group_is_dropped(text):
    # utils_3d.decode_str_to_bbox finds no group -> model_singlerefer.py bbox_lst[0] raises
    # IndexError (no try/except): the sample is not scored; we drop and count it.
    report = R.score_texts("scanrefer", [_grounding()], [text])
    assert report.dropped == {"no_box_group": 1} and report.metrics == {}


def test_scanrefer_multi_word_name_keeps_its_last_word():
    # `brown chair 1 <bbox>`: the official group is `chair 1 <bbox>...`, the box is scored: 8/(8+1e-8)
    groups = M.decode_box_groups("brown chair 1 " + _bbox(-1, -1, -1, 1, 1, 1))
    assert [name for name, _ in groups] == ["chair"]
    assert _score("scanrefer", _grounding(), "brown chair 1 " + _bbox(-1, -1, -1, 1, 1, 1)) == 8 / (8 + 1e-8)


@pytest.mark.parametrize("values,reason", [
    ((-1, -1, -1, 1, 1), "box_not_six_numbers"),        # utils_3d.aabb_to_xyzwlh unpacks 6: ValueError
    ((-1, -1, -1, 1, 1, 1, 1), "box_not_six_numbers"),
    (("x", -1, -1, 1, 1, 1), "box_not_numbers"),        # decode_str_to_bbox float('x'): ValueError
])
def test_scanrefer_box_that_raises_officially_is_dropped(values, reason):
    report = R.score_texts("scanrefer", [_grounding(), _grounding()],
                           ["chair 1 " + _bbox(*values), "chair 1 " + _bbox(-1, -1, -1, 1, 1, 1)])
    # only the good sample is averaged: acc 100 over n = 1, the other counted under its reason
    assert report.dropped == {reason: 1}
    assert report.metrics["all"] == {"acc@0.25": 100.0, "acc@0.5": 100.0, "n": 1}


# ---- Multi3DRefer ----------------------------------------------------------------------------

@pytest.mark.parametrize("z_max,expected", [
    # pred -1..1 x -1..1 x -1..z_max, GT -1..1: IoU = 8 / (4 (z_max + 1) + 1e-8).
    # z_max = 3.0000001: IoU = 0.49999999..., 6e-9 under 0.5; float32 spacing below 0.5 is 3e-8,
    # so np.float32 rounds it to 0.5: a hit at 0.5 and 0.25 -> F1 = 2 * 1 / (1 + 1) = 1 for both.
    (3.0000001, (1.0, 1.0)),
    # z_max = 7.0000001: IoU 3e-9 under 0.25 -> float32 0.25: hit at 0.25 only -> (1, 0).
    (7.0000001, (1.0, 0.0)),
    # z_max = 7.1: IoU 0.2469 stays under 0.25 in float32 -> (0, 0).
    (7.1, (0.0, 0.0)),
])
def test_multi3drefer_float32_iou_rounds_up_to_the_threshold(z_max, expected):
    text = "chair 1 " + _bbox(-1, -1, -1, 1, 1, z_max)
    assert _score("multi3drefer", _grounding(), text) == expected


def test_multi3drefer_unparseable_sample_leaves_the_average():
    # Sample A: its one box is the GT -> F1 (1, 1). Sample B: two boxes, the second holds 'x';
    # decode_str_to_bbox raises, model_multi3drefer.py's try/except skips the sample, so the
    # official F1@0.25 is mean([1]) = 100 over n = 1, with B counted as dropped.
    good = "chair 1 " + _bbox(-1, -1, -1, 1, 1, 1)
    bad = "chair 2 " + _bbox(5, 5, 5, 6, 6, 6) + _bbox(1, 2, "x", 3, 4, 5)
    report = R.score_texts("multi3drefer", [_grounding(), _grounding()], [good, bad])
    assert report.metrics["all"] == {"f1@0.25": 100.0, "f1@0.5": 100.0, "n": 1}
    assert report.dropped == {"box_not_numbers": 1}


def test_multi3drefer_counts_only_the_first_group_and_empty_cases():
    # model_multi3drefer.py keeps bbox_lst[0]'s boxes: the exact second group is ignored -> (0, 0)
    text = "lamp 1 " + _bbox(5, 5, 5, 6, 6, 6) + ", chair 1 " + _bbox(-1, -1, -1, 1, 1, 1)
    assert _score("multi3drefer", _grounding(), text) == (0.0, 0.0)
    empty = _grounding()
    empty["metadata"]["object"][0]["object_bbox"] = []
    assert _score("multi3drefer", empty, "nothing") == (1.0, 1.0)   # both empty
    assert _score("multi3drefer", _grounding(), "nothing") == (0.0, 0.0)  # a target missed


# ---- VSI-Bench -------------------------------------------------------------------------------

def test_vsibench_answer_is_not_stripped_after_the_tag():
    # vsibench_cot_process_results: " 3.5" -> fuzzy_matching: " 3.5".split(' ')[0] = "" ->
    # to_float None -> TypeError caught -> 0. The same for a letter option: "" != "B".
    assert M.vsibench_score("object_abs_distance", "<think>t</think><answer> 3.5</answer>", "3.5") == 0.0
    assert M.vsibench_score("object_rel_distance", "<answer> B</answer>", "B") == 0.0
    # the whole output is stripped by the generation code, so a leading space there is harmless
    assert M.vsibench_score("object_abs_distance", "  <answer>3.5</answer>\n", "3.5") == 1.0


def test_vsibench_mra_divides_by_the_signed_ground_truth():
    # abs_dist_norm: |5 - (-2)| / -2 = -3.5 <= 1 - t for all ten t -> 1.0
    assert M.vsibench_score("object_counting", "5", "-2") == 1.0


def test_vsibench_zero_ground_truth_is_dropped_and_counted():
    # abs(1.0 - 0.0) / 0.0 raises ZeroDivisionError (not caught; lmms-eval stops): dropped.
    samples = [{"id": i, "dataset": "d", "scene_name": "s", "question_type": "object_counting",
                "question": "q", "ground_truth": gt} for i, gt in enumerate(["0", "4"])]
    report = R.score_texts("vsibench", samples, ["<answer>1</answer>", "<answer>4</answer>"])
    assert report.dropped == {"vsibench_zero_ground_truth": 1}
    assert report.metrics == {"object_counting": 100.0, "overall": 100.0}


def test_vsibench_aggregate_without_the_easy_subset_keeps_the_others_apart():
    # vsibench_aggregate_results merges the direction subsets only `if easy in output`, so
    # medium 1.0 and hard 1.0 stay two entries next to counting 0.0: overall (1 + 1 + 0) / 3.
    out = M.vsibench_aggregate([("object_rel_direction_medium", 1.0), ("object_rel_direction_hard", 1.0),
                                ("object_counting", 0.0)])
    assert out["overall"] == pytest.approx(200.0 / 3)
    assert "object_rel_direction" not in out and out["object_rel_direction_medium"] == 100.0


# ---- ScanQA / SQA3D --------------------------------------------------------------------------

def test_scanqa_space_after_the_tag_is_not_an_exact_match():
    # model_3dvqa.py keeps " chair" after split("<answer>"); eval_scanqa.py: " chair" in ["chair"] -> 0
    assert M.scanqa_exact_match("<think></think><answer> chair</answer>", ["chair"]) == 0.0


def test_sqa3d_reference_is_the_conversation_answer():
    # model_3dvqa.py: gt_response = conversations[1]["value"]; metadata.answers is not read
    sample = {"id": "q", "video": "v", "metadata": {"question_type": "what", "answers": ["chair"]},
              "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "Table."}]}
    # clean("table") == clean("Table.") == "table" -> (1, 1); "chair" matches neither way -> (0, 0)
    assert _score("sqa3d", sample, "<answer>table</answer>") == (1.0, 1.0)
    assert _score("sqa3d", sample, "<answer>chair</answer>") == (0.0, 0.0)


def test_sqa3d_refined_match_stops_at_the_first_reference():
    # LEO answer_match: "brown chair" contains "chair" -> returns (0, 1) before reaching the
    # equal second reference
    assert M.sqa3d_match("<answer>chair</answer>", ["brown chair", "chair"]) == (0.0, 1.0)
    assert M.sqa3d_match("<answer>chair</answer>", ["chair", "brown chair"]) == (1.0, 1.0)


def test_sqa3d_empty_prediction_is_refined_correct():
    # clean("") = "", and "" in "chair" -> LEO returns (0, 1)
    assert M.sqa3d_match("<answer></answer>", ["chair"]) == (0.0, 1.0)
    assert M.sqa3d_match("", ["chair"]) == (0.0, 1.0)


def test_box_iou_matches_the_corner_formula_on_random_boxes():
    # scanrefer_box3d_iou is the official corner computation: check it against an independent
    # evaluation of inter / (union + 1e-8) on random boxes (not a hand case: a guard on the port)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.uniform(-2, 2, 6), rng.uniform(-2, 2, 6)
        lo_a, hi_a = a[:3] - np.abs(a[3:]) / 2, a[:3] + np.abs(a[3:]) / 2
        lo_b, hi_b = b[:3] - np.abs(b[3:]) / 2, b[:3] + np.abs(b[3:]) / 2
        inter = np.prod(np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None))
        union = np.prod(hi_a - lo_a) + np.prod(hi_b - lo_b) - inter
        assert M.scanrefer_box3d_iou(a, b) == pytest.approx(inter / (union + 1e-8), rel=1e-12, abs=1e-15)
