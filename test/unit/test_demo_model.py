"""The shipped demo model (gs_reasoner_ros/models/demo) grounds held-out generated rooms on CPU.

Threshold: set from the measured held-out scores of the shipped weights (scores.json beside
them); the issue's bar is Acc@0.25 >= 0.6. Skipped only where this checkout has no demo weights."""
from __future__ import annotations

import numpy as np
import pytest

from gs_reasoner_ros.model.demo import demo_checkpoint_dir

MIN_ACC25 = 0.6  # the bar; lower it only to the measured value of the shipped weights, and say so
ROOMS = 3

pytestmark = pytest.mark.skipif(demo_checkpoint_dir() is None, reason="no demo weights in this checkout")


@pytest.mark.timeout(600)
def test_shipped_weights_ground_held_out_rooms(tmp_path):
    from gs_reasoner_ros.training.demo_recipe import EVAL_SEED_BASE, evaluate_checkpoint, record_eval_rooms

    rooms = record_eval_rooms(tmp_path, ROOMS)
    for room in rooms:
        room["items"] = [i for i in room["items"] if i["kind"] == "ground"]
    scores, scored = evaluate_checkpoint(demo_checkpoint_dir(), rooms, "cpu", 120)
    assert EVAL_SEED_BASE >= 100_000  # held-out seeds lie far beyond any training seed
    assert scores["ground_all"]["n"] >= 10
    assert scores["ground_all"]["acc@0.25"] >= MIN_ACC25, [(s["question"], round(s["iou"], 2)) for s in scored]
    assert np.isfinite(scores["ground_all"]["mean_iou"])
