"""Training data: mixtures, target text, ChatML labels, and the sample pipeline end to end."""
import json

import numpy as np
import pytest

from gs_reasoner_ros.evaluation.metrics import parse_box_groups
from gs_reasoner_ros.reasoning import IMAGE_TOKEN_INDEX, prompt_ids
from gs_reasoner_ros.training import data as D
from gs_reasoner_ros.training.augment import PointAugmentation
from gs_reasoner_ros.training.mixture import load_mixture, load_training_samples, parse_strategy, select
from gs_reasoner_ros.training.synthetic_data import write_synthetic_dataset


@pytest.fixture(scope="module")
def tokenizer():
    from gs_reasoner_ros.model.tokenizer import build_tiny_tokenizer
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_scenes=2, n_frames=5)


# ---- mixtures ----------------------------------------------------------------------

def test_sampling_strategies_follow_the_authors_rounding():
    items = list(range(15))
    first, end = select(items, "first:90%"), select(items, "end:10%")
    assert first == list(range(14))          # ceil(13.5)
    assert end == [13, 14]                   # ceil(1.5): one sample in both stages
    assert select(items, "first:3") == [0, 1, 2]
    assert select(items, "end:3") == [12, 13, 14]
    assert select(items, "end:0") == []
    assert select(items, "all") == items
    r1 = select(items, "random:5", np.random.default_rng(1))
    assert r1 == select(items, "random:5", np.random.default_rng(1)) and len(set(r1)) == 5
    assert parse_strategy("random:20%") == ("random", 20, True)
    for bad in ("first", "last:10", "first:150%", "first:-1"):
        with pytest.raises(ValueError, match="sampling_strategy"):
            parse_strategy(bad)


def test_mixture_yaml_resolves_paths_next_to_it(tmp_path):
    sample = {"id": 0, "video": "a/b", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                          {"from": "gpt", "value": "x"}]}
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "s.json").write_text(json.dumps([dict(sample, id=i) for i in range(10)]))
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps(dict(sample, id=100 + i)) for i in range(4)))
    (tmp_path / "mix.yaml").write_text('datasets:\n  - json_path: sub/s.json\n    sampling_strategy: "end:20%"\n'
                                       '  - json_path: s.jsonl\n')
    assert [s["id"] for s in load_mixture(tmp_path / "mix.yaml")] == [8, 9, 100, 101, 102, 103]
    assert len(load_training_samples(tmp_path / "s.jsonl")) == 4
    (tmp_path / "bad.yaml").write_text("datasets: []\n")
    with pytest.raises(ValueError, match="datasets"):
        load_mixture(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text(json.dumps([{"id": 1, "video": "v", "conversations": []}]))
    with pytest.raises(ValueError, match="conversations"):
        load_training_samples(tmp_path / "bad.json")


# ---- target text -------------------------------------------------------------------

def test_grounding_text_hand_values():
    chair = {"object_name": "chair", "object_bbox": [[1, 2, 3, 2, 2, 2]]}
    assert D.grounding_text([chair], None) == "chair 1 <bbox>(0.0000, 1.0000, 2.0000, 2.0000, 3.0000, 4.0000)</bbox>"
    two = {"object_name": "mug", "object_bbox": [[0, 0, 0, 1, 1, 1], [5, 5, 5, 0.5, 0.5, 0.5]]}
    text = D.grounding_text([chair, two], None)
    assert text.startswith("chair 1 <bbox>") and ", mug 2 <bbox>(-0.5000" in text
    assert text.endswith("<bbox>(4.7500, 4.7500, 4.7500, 5.2500, 5.2500, 5.2500)</bbox>")
    assert D.grounding_text([{"object_name": "piano", "object_bbox": []}], None) == "<bbox></bbox>"
    shuffled = {D.grounding_text([two], np.random.default_rng(s)) for s in range(20)}
    assert len(shuffled) == 2  # both box orders occur


def test_turns_rewrite_ground_and_wrap_answers():
    grounding = {"id": 1, "video": "v", "conversations": [{"from": "human", "value": "<image>\nthe chair"},
                                                           {"from": "gpt", "value": "<ground>"}],
                 "metadata": {"dataset": "scanrefer", "object": [{"object_name": "chair", "object_bbox": [[0, 0, 0, 2, 2, 2]]}]}}
    turns = D.build_turns(grounding, grounding["metadata"]["object"], None)
    assert turns[0][1].startswith("<image>\nThe video captures 3D spatial information")
    # authors: only "<image>" is cut from the question, so its "\n" stays: "Question: \n\nthe chair"
    assert turns[0][1].endswith("Question: \n\nthe chair")
    assert turns[1][1] == ("<think></think><answer>chair 1 <bbox>(-1.0000, -1.0000, -1.0000, 1.0000, 1.0000, "
                           "1.0000)</bbox></answer>")
    qa = {"id": 2, "video": "v", "conversations": [{"from": "human", "value": "<image>\nhow many?"},
                                                    {"from": "gpt", "value": "two"}], "metadata": {"dataset": "scanQA"}}
    assert D.build_turns(qa, None, None)[1][1] == "<think></think><answer>two</answer>"


def test_labels_cover_exactly_the_assistant_text(tokenizer):
    question = "the red chair near the desk"
    turns = [("user", f"<image>\n{D.load_prompts()['direct_answer']}\n{question}"),
             ("assistant", "<think></think><answer>chair 1 <bbox>(0.1000, 0.2000, 0.0000, 0.6000, 0.7000, 0.9000)</bbox></answer>")]
    ids, labels = D.encode_turns(tokenizer, turns)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and len(ids) == len(labels)
    learned = [t for t in labels if t != D.IGNORE_INDEX]
    assert tokenizer.decode(learned) == turns[1][1] + "<|im_end|>"
    first = labels.index(learned[0])
    assert all(x == D.IGNORE_INDEX for x in labels[:first])
    assert labels[first:first + len(learned)] == ids[first:first + len(learned)]
    # the prompt part is exactly what inference feeds the model for a grounding query
    assert ids[:first] == prompt_ids(tokenizer, question, task="ground")


def test_encode_turns_rejects_bad_conversations(tokenizer):
    with pytest.raises(ValueError, match="exactly one <image>"):
        D.encode_turns(tokenizer, [("user", "no image"), ("assistant", "x")])
    with pytest.raises(ValueError, match="no assistant"):
        D.encode_turns(tokenizer, [("user", "<image>\nq")])


# ---- samples end to end ------------------------------------------------------------

def test_synthetic_dataset_files_follow_the_schema(dataset):
    for name in ("grounding", "qa", "gcot"):
        assert D.load_sample_file(dataset[name])  # validates every sample
    pre, fine = load_mixture(dataset["pretrain"]), load_mixture(dataset["finetune"])
    grounding = json.loads(dataset["grounding"].read_text())
    assert len(pre) == int(np.ceil(0.9 * len(grounding)))
    assert fine[0] == grounding[len(grounding) - int(np.ceil(0.1 * len(grounding)))]
    assert {s["metadata"]["dataset"] for s in fine[-6:]} == {"scanQA", "vsibench_cot"}


def test_boxes_in_the_target_follow_the_augmented_points(dataset, tokenizer):
    samples = [s for s in D.load_sample_file(dataset["grounding"]) if s["metadata"]["dataset"] == "scanrefer"]
    plain = D.SampleBuilder(dataset["root"], tokenizer, frames=(2, 4), augment=False, crop=28, seed=3)
    augmented = D.SampleBuilder(dataset["root"], tokenizer, frames=(2, 4), augment=True, crop=28, seed=3)
    moved = 0
    for i, sample in enumerate(samples[:4]):
        ref, ex = plain.build(sample, i), augmented.build(sample, i)
        assert 2 <= len(ex.pixel_values) <= 4 and ex.world_coords.shape == (len(ex.pixel_values), 28, 28, 3)
        np.testing.assert_allclose(ex.world_coords, ex.augmentation.apply_points(ref.world_coords), atol=1e-4)
        target = D.IGNORE_INDEX
        text = tokenizer.decode([t for t in ex.labels if t != target])
        (_, boxes), = parse_box_groups(text)
        gt = np.asarray(sample["metadata"]["object"][0]["object_bbox"])
        expected = ex.augmentation.apply_boxes_center_size(gt)[0]
        np.testing.assert_allclose(boxes[0], np.concatenate([expected[:3] - expected[3:] / 2,
                                                             expected[:3] + expected[3:] / 2]), atol=1e-4)
        # every map point on or in the original box (rendered points lie on its faces, depth in
        # mm) is on or in the written box after augmentation (scale <= 1.25, 4 decimals)
        lo, hi = gt[0, :3] - gt[0, 3:] / 2 - 0.002, gt[0, :3] + gt[0, 3:] / 2 + 0.002
        pts = ref.world_coords.reshape(-1, 3)
        inside = np.all((pts >= lo) & (pts <= hi), axis=1)
        moved_pts = ex.world_coords.reshape(-1, 3)[inside]
        tol = 0.002 * 1.25 + 2e-4
        assert np.all(moved_pts >= boxes[0][:3] - tol) and np.all(moved_pts <= boxes[0][3:] + tol)
        moved += int(inside.sum())
    assert moved > 0  # the check saw object points


def test_gcot_uses_its_stored_augmentation_and_qa_none(dataset, tokenizer):
    builder = D.SampleBuilder(dataset["root"], tokenizer, frames=2, crop=28)
    gcot = D.load_sample_file(dataset["gcot"])[0]
    ex = builder.build(gcot, 0)
    assert ex.augmentation == PointAugmentation.from_config(gcot["metadata"]["data_augmentation"])
    assert len(ex.pixel_values) == 2
    qa = D.load_sample_file(dataset["qa"])[0]
    assert builder.build(qa, 0).augmentation == PointAugmentation()


def test_builder_errors(dataset, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="data root"):
        D.SampleBuilder(tmp_path / "missing", tokenizer)
    builder = D.SampleBuilder(dataset["root"], tokenizer, frames=2, crop=28)
    sample = dict(D.load_sample_file(dataset["qa"])[0], video="synthetic/nowhere")
    with pytest.raises(ValueError, match="scene folder"):
        builder.build(sample)
