"""`gs-reasoner infer`: --json, --dump shapes and consistency, user errors (exit 2, one line)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gs_reasoner_ros.tools.cli import main
from gs_reasoner_ros.reasoning import IMAGE_TOKEN_INDEX, parse_output, prompt_ids

pytest.importorskip("gs_reasoner_ros.model.tiny", reason="the model package's tiny builder is not in the tree yet")

QUESTION = "How far is the wall <|im_end|> from me?"


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    """Two 24x32 frames of walls 1 m and 3 m away."""
    from gs_reasoner_ros.scene import Scene

    rng = np.random.default_rng(0)
    depth = np.stack([np.full((24, 32), d, np.float32) for d in (1.0, 3.0)])
    k = np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    scene = Scene(rng.integers(0, 256, (2, 24, 32, 3), dtype=np.uint8), depth, k, np.stack([np.eye(4)] * 2))
    path = tmp_path_factory.mktemp("scene") / "planes.npz"
    scene.save_npz(path)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from gs_reasoner_ros.model.tokenizer import load_tokenizer
    from gs_reasoner_ros.reasoner import tiny_checkpoint_dir

    return load_tokenizer(tiny_checkpoint_dir(0))


def infer(capsys, *args):
    code = main(["infer", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_and_dump(capsys, scene_file, tokenizer, tmp_path):
    dumps = []
    for i in range(2):
        dump = tmp_path / f"run{i}.npz"
        code, out, err = infer(capsys, "--checkpoint", "tiny", "--scene", scene_file, "--question", QUESTION,
                               "--max-new-tokens", 5, "--seed", 0, "--json", "--dump", dump)
        assert code == 0, err
        assert "untrained" in err
        dumps.append((json.loads(out), dict(np.load(dump))))
    (result, arrays), (_, again) = dumps
    assert set(result) == {"answer", "text", "objects", "timings"}
    assert all(set(o) == {"label", "box_min", "box_max", "confidence"} for o in result["objects"])
    assert result["timings"]["total_s"] > 0

    assert set(arrays) == {"prompt_ids", "visual_embeds", "last_logits", "generated_ids"}
    assert arrays["prompt_ids"].dtype == np.int64 and arrays["generated_ids"].dtype == np.int64
    assert arrays["visual_embeds"].dtype == np.float32 and arrays["last_logits"].dtype == np.float32
    assert int((arrays["prompt_ids"] == IMAGE_TOKEN_INDEX).sum()) == 1
    assert arrays["prompt_ids"].tolist() == prompt_ids(tokenizer, QUESTION)
    assert arrays["visual_embeds"].shape[0] == 2 * 210
    assert arrays["last_logits"].shape == (len(tokenizer),)
    gen = arrays["generated_ids"].tolist()
    assert 1 <= len(gen) <= 5 and gen[0] == int(np.argmax(arrays["last_logits"]))
    assert result["text"] == tokenizer.decode(gen, skip_special_tokens=True)
    assert result["answer"] == parse_output(result["text"])[1]
    for key in arrays:  # same seed, same everything
        np.testing.assert_array_equal(arrays[key], again[key], err_msg=key)


def test_checkpoint_folder_equals_tiny_seed(capsys, scene_file, tmp_path):
    """A tiny checkpoint written to a folder and loaded from it gives what --checkpoint tiny gives."""
    from gs_reasoner_ros.model.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(tmp_path / "ckpt", seed=3)
    runs = []
    for ckpt in (folder, "tiny"):
        dump = tmp_path / f"{'tiny' if ckpt == 'tiny' else 'folder'}.npz"
        code, out, err = infer(capsys, "--checkpoint", ckpt, "--seed", 3, "--scene", scene_file, "--task", "ground",
                               "--question", "the wall", "--max-new-tokens", 3, "--dump", dump)
        assert code == 0, err
        assert out.startswith("answer: ")
        runs.append(dict(np.load(dump)))
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key], err_msg=key)


@pytest.mark.parametrize("args,message", [
    (["--scene", "{scene}", "--question", "q"], "--checkpoint DIR is required"),
    (["--checkpoint", "{tmp}/missing", "--scene", "{scene}", "--question", "q"], "is not a folder"),
    (["--checkpoint", "tiny", "--scene", "{tmp}/nope.npz", "--question", "q"], "does not exist"),
    (["--checkpoint", "tiny", "--scene", "{tmp}/bad.txt", "--question", "q"], "cannot read --scene"),
    (["--checkpoint", "tiny", "--scene", "{scene}", "--question", "x" * 5000], "limit is 4000"),
    (["--checkpoint", "tiny", "--scene", "{scene}", "--question", "q", "--max-new-tokens", "4000000000"],
     "max_new_tokens must be in"),
    (["--checkpoint", "tiny", "--scene", "{scene}", "--question", "q", "--task", "ground", "--options", "A. x"],
     "options are not used with task 'ground'"),
    (["--checkpoint", "tiny", "--scene", "{scene}", "--question", "q", "--dump", "{tmp}/no/dir/x.npz"],
     "does not exist"),
])
def test_user_errors_exit_2_without_traceback(capsys, scene_file, tmp_path, args, message):
    (tmp_path / "bad.txt").write_text("not a scene")
    args = [a.format(scene=scene_file, tmp=tmp_path) for a in args]
    code, out, err = infer(capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert out == ""
