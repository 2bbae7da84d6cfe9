"""Benchmark runners: scripted answers scored against hand-computed values, and the CLI on a tiny model."""
import json

import numpy as np
import pytest

from gs_reasoner_ros.evaluation import runners as R
from gs_reasoner_ros.training.data import format_box


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from gs_reasoner_ros.training.synthetic_data import write_synthetic_dataset
    return write_synthetic_dataset(tmp_path_factory.mktemp("eval"), n_scenes=1, n_frames=2)


def _box_text(center_size):
    c = np.asarray(center_size, float)
    return format_box(np.concatenate([c[:3] - c[3:] / 2, c[:3] + c[3:] / 2]))


def test_scanrefer_and_multi3drefer_scores(data):
    samples = json.loads(data["grounding"].read_text())
    refer = [s for s in samples if s["metadata"]["dataset"] == "scanrefer"][:2]
    script = {refer[0]["id"]: f"<answer>thing 1 <bbox>{_box_text(refer[0]['metadata']['object'][0]['object_bbox'][0])}</bbox></answer>",
              refer[1]["id"]: "<answer>no idea</answer>"}
    report = R.evaluate("scanrefer", refer, lambda s, t: script[s["id"]])
    # official (model_singlerefer.py): an answer without a box group raises (bbox_lst[0]), so
    # the second sample leaves the average and is counted instead
    assert report.metrics["all"] == {"acc@0.25": 100.0, "acc@0.5": 100.0, "n": 1}
    assert report.dropped == {"no_box_group": 1}
    assert report.predictions[0]["iou"] == pytest.approx(1.0, abs=1e-3)  # 4-decimal text
    assert report.predictions[1]["dropped"] == "no_box_group" and "iou" not in report.predictions[1]
    assert "dropped" in R.format_table(report)

    multi = [s for s in samples if s["metadata"]["dataset"] == "multi3drefer"]
    empty = [s for s in multi if not s["metadata"]["object"][0]["object_bbox"]]
    full = [s for s in multi if s["metadata"]["object"][0]["object_bbox"]][:1]
    answers = {empty[0]["id"]: "<answer><bbox></bbox></answer>", full[0]["id"]: "<answer><bbox></bbox></answer>"}
    report = R.evaluate("multi3drefer", empty[:1] + full, lambda s, t: answers[s["id"]])
    assert report.metrics["zt_w_d"]["f1@0.25"] == 100.0  # nothing asked, nothing given
    assert report.metrics["st_w_d"]["f1@0.25"] == 0.0     # an object missed
    assert report.metrics["all"]["f1@0.5"] == 50.0


def test_qa_and_vsibench_scores(data):
    qa = json.loads(data["qa"].read_text())
    right = lambda s, t: f"<think></think><answer>{s['metadata']['answers'][0]}</answer>"
    report = R.evaluate("scanqa", qa, right)
    assert report.metrics["all"]["em"] == 100.0 and report.metrics["all"]["cider"] > 0
    report = R.evaluate("sqa3d", qa, lambda s, t: "<answer>a purple elephant</answer>")
    assert report.metrics["all"] == {"em": 0.0, "em_refined": 0.0, "n": len(qa)}
    vsi = json.loads(data["vsibench"].read_text())
    report = R.evaluate("vsibench", vsi, lambda s, t: f"<think>x</think><answer>{s['ground_truth']}</answer>")
    assert report.metrics["overall"] == 100.0
    assert "object_abs_distance" in R.format_table(report)


def test_bad_eval_input(data):
    with pytest.raises(ValueError, match="lacks ground_truth"):
        R.evaluate("vsibench", [{"id": 1, "dataset": "d", "scene_name": "s", "question_type": "x", "question": "q"}],
                   lambda s, t: "")
    with pytest.raises(ValueError, match="task"):
        R.evaluate("scannet", [], lambda s, t: "")


def test_cli_runs_a_tiny_checkpoint(data, tmp_path, capsys):
    from gs_reasoner_ros.tools.cli import main
    from gs_reasoner_ros.model.tiny import build_tiny_checkpoint

    ckpt = build_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    preds = tmp_path / "p.jsonl"
    code = main(["eval", "--task", "scanrefer", "--checkpoint", str(ckpt), "--data", str(data["grounding"]),
                 "--limit", "1", "--frames", "1", "--max-new-tokens", "2", "--json", "--no-progress",
                 "--predictions", str(preds)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    # two random tokens rarely hold a box group: the sample is then dropped (as the official
    # script raises on it), so it is either scored or counted, never lost
    assert out["task"] == "scanrefer" and out["n"] == 1
    assert out["metrics"].get("all", {}).get("n", 0) + sum(out["dropped"].values()) == 1
    assert len(preds.read_text().splitlines()) == 1
    assert main(["eval", "--task", "scanqa", "--data", str(tmp_path / "missing.json")]) == 2
