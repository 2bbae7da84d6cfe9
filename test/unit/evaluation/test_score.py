"""`gs-reasoner eval --score`: saved predictions scored without a model give the run's numbers."""
import json
import zlib

import pytest

from gs_reasoner_ros.tools.cli import main
from gs_reasoner_ros.evaluation import scoring as S


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from gs_reasoner_ros.training.synthetic_data import write_synthetic_dataset
    return write_synthetic_dataset(tmp_path_factory.mktemp("score"), n_scenes=1, n_frames=2)


FILES = {"vsibench": "vsibench", "scanrefer": "grounding", "multi3drefer": "grounding", "scanqa": "qa", "sqa3d": "qa"}


@pytest.mark.parametrize("task", sorted(FILES))
def test_score_reproduces_the_run_that_wrote_the_predictions(task, data, tmp_path, capsys, monkeypatch):
    preds, per_sample = tmp_path / "p.jsonl", tmp_path / "s.jsonl"
    bench = str(data[FILES[task]])
    run = ["eval", "--task", task, "--checkpoint", "tiny", "--data", bench, "--limit", "3", "--frames", "1",
           "--max-new-tokens", "6", "--json", "--no-progress", "--predictions", str(preds)]
    assert main(run) == 0
    by_model = json.loads(capsys.readouterr().out)

    # scoring must not touch the model: make loading one fail loudly
    import gs_reasoner_ros.reasoner as reasoner
    monkeypatch.setattr(reasoner.Reasoner, "load", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    assert main(["eval", "--task", task, "--data", bench, "--score", str(preds), "--json",
                 "--per-sample", str(per_sample)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1  # one JSON line
    assert json.loads(lines[0]) == by_model
    rows = [json.loads(line) for line in per_sample.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert all(("scores" in r) != ("dropped" in r) for r in rows)


def test_score_table_and_id_matching(data, tmp_path, capsys):
    samples = json.loads(data["qa"].read_text())
    preds = tmp_path / "p.jsonl"
    # by id only, out of order: the sample's own first answer is right, a made-up one is wrong
    lines = [{"id": samples[1]["id"], "text": f"<answer>{samples[1]['metadata']['answers'][0]}</answer>"},
             {"id": samples[0]["id"], "text": "<answer>a purple elephant</answer>"}]
    preds.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["eval", "--task", "scanqa", "--data", str(data["qa"]), "--score", str(preds)]) == 0
    out = capsys.readouterr().out
    assert "scanqa (2 samples)" in out and "50.00" in out  # EM 1 of 2


@pytest.mark.parametrize("line,message", [
    ({"id": "nope", "text": "x"}, "not in the benchmark file"),
    ({"index": 99, "text": "x"}, "outside the benchmark file"),
    ({"index": 0}, "generated `text`"),
    ({"text": "x"}, "`index` or `id`"),
])
def test_score_rejects_predictions_it_cannot_place(line, message, data, tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps(line) + "\n")
    assert main(["eval", "--task", "scanqa", "--data", str(data["qa"]), "--score", str(preds)]) == 2
    assert message in capsys.readouterr().err


def test_score_rejects_index_and_id_that_disagree(data):
    samples = json.loads(data["qa"].read_text())
    with pytest.raises(ValueError, match="another file"):
        S.score_predictions("scanqa", samples, [{"index": 0, "id": samples[1]["id"], "text": "x"}])
    with pytest.raises(ValueError, match="more than one prediction"):
        S.score_predictions("scanqa", samples, [{"index": 0, "text": "x"}, {"id": samples[0]["id"], "text": "y"}])


def _scripted(sample, task):
    """Right, wrong and officially-unscorable answers in turn, so the aggregates are not all 0."""
    k = zlib.crc32(str(sample.get("id")).encode()) % 3
    if task == "vsibench":
        return ["<answer>%s</answer>" % sample["ground_truth"], "<answer> 1</answer>", "<answer>9</answer>"][k]
    if task in ("scanrefer", "multi3drefer"):
        c = sample["metadata"]["object"][0]["object_bbox"][:1] or [[0, 0, 0, 1, 1, 1]]
        lo = [c[0][i] - c[0][i + 3] / 2 for i in range(3)]
        hi = [c[0][i] + c[0][i + 3] / 2 for i in range(3)]
        box = "<bbox>(%s)</bbox>" % ", ".join(f"{v:.4f}" for v in lo + hi)
        return ["thing 1 " + box, "thing: 1 " + box, "thing 1 <bbox>(1, 2)</bbox>"][k]
    answer = sample["conversations"][1]["value"] if task == "sqa3d" else sample["metadata"]["answers"][0]
    return ["<answer>%s</answer>" % answer, "<answer> %s</answer>" % answer, "<answer></answer>"][k]


@pytest.mark.parametrize("task", sorted(FILES))
def test_score_reproduces_a_scored_run_with_real_numbers(task, data, tmp_path, capsys, monkeypatch):
    # the same --predictions path, with the model's answers replaced by scripted ones that hit,
    # miss and trip the official code (so equal aggregates are not just equal zeros)
    from gs_reasoner_ros.evaluation import runners

    monkeypatch.setattr(runners.ReasonerAnswerer, "__call__", lambda self, sample, t: _scripted(sample, t))
    preds = tmp_path / "p.jsonl"
    bench = str(data[FILES[task]])
    assert main(["eval", "--task", task, "--checkpoint", "tiny", "--data", bench, "--json", "--no-progress",
                 "--frames", "1", "--predictions", str(preds)]) == 0
    by_model = json.loads(capsys.readouterr().out)
    assert main(["eval", "--task", task, "--data", bench, "--score", str(preds), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == by_model
