"""The Reasoner facade: frame choice, prompt, parsing, confidences, limits; end to end on a tiny model."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gs_reasoner_ros.model.tokenizer import build_tiny_tokenizer
from gs_reasoner_ros.reasoner import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_CAP, Reasoner
from gs_reasoner_ros.reasoning import IMAGE_TOKEN_INDEX, chat_prompt, parse_output
from gs_reasoner_ros.scene import Scene

HIDDEN = 8


def plane_scene(n_frames=2, h=24, w=32, seed=0) -> Scene:
    """Frames looking at fronto-parallel planes 1-3 m away, camera stepping along x."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (n_frames, h, w, 3), dtype=np.uint8)
    depth = np.stack([np.full((h, w), 1.0 + 2.0 * i / max(n_frames - 1, 1), np.float32) for i in range(n_frames)])
    k = np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]])
    poses = np.stack([np.eye(4) for _ in range(n_frames)])
    poses[:, 0, 3] = np.arange(n_frames) * 0.1
    return Scene(rgb, depth, k, poses)


class FakeModel:
    """Stands in for GSReasonerForCausalLM: records calls, 'generates' a fixed text."""

    def __init__(self, tokenizer, text, probs=None):
        self.ids = tokenizer(text).input_ids + [tokenizer.eos_token_id]
        self.probs = list(probs) if probs is not None else list(np.linspace(0.2, 0.8, len(self.ids)))
        self.calls = {}
        self.timings = {"sonata_s": 0.5}

    def preprocess(self, scene, frames, cache=None, keys=None):
        self.calls["frames"] = list(frames)
        return torch.zeros(len(frames), 3, 4, 4), torch.zeros(len(frames), 4, 4, 3)

    def encode_visual(self, pixel_values, world_coords, deterministic=True, generator=None):
        self.calls["deterministic"] = deterministic
        self.calls["generator"] = generator
        return torch.ones(len(pixel_values) * 210, HIDDEN)

    def generate(self, prompt_ids, visual, max_new_tokens, eos_token_ids, prefix_key=None):
        self.calls.update(prompt_ids=list(prompt_ids), max_new_tokens=max_new_tokens, eos=list(eos_token_ids),
                          prefix_key=prefix_key)
        logits = torch.zeros(50)
        return SimpleNamespace(ids=self.ids, token_probs=self.probs, last_prompt_logits=logits,
                               timings={"prefill_s": 0.25, "decode_s": 0.125, "new_tokens": len(self.ids)})


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


TEXT = ("<think>the sofa. coffee table 2 <bbox>(1.0, 2.0, 0.0, 0.5, 1.5, 0.75)</bbox><bbox>(3, 3, 0, 4, 4, 1)</bbox>"
        "</think><answer>1.5</answer>")


def test_facade_with_fake_model(tok):
    model = FakeModel(tok, TEXT)
    r = Reasoner(model, tok, num_frames=3)
    result = r.run(plane_scene(5), "How far?", options=["A. 1", "B. 2"])
    a = result.answer
    assert model.calls["frames"] == [0, 2, 4]  # uniform choice over 5 frames
    assert model.calls["deterministic"] is True and model.calls["generator"] is None
    assert model.calls["max_new_tokens"] == DEFAULT_MAX_NEW_TOKENS["spatial"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.calls["eos"]
    # The prompt handed to the model decodes to the README prompt, <image> as the placeholder.
    ids = model.calls["prompt_ids"]
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    at = ids.index(IMAGE_TOKEN_INDEX)
    assert tok.decode(ids[:at]) + "<image>" + tok.decode(ids[at + 1:]) == \
        chat_prompt("How far?", ["A. 1", "B. 2"], "spatial")
    assert a.text == TEXT and a.answer == "1.5" and a.think.startswith("the sofa.")
    assert a.keyframes_used == 3 and a.untrained is False
    assert [o.label for o in a.objects] == ["coffee table"] * 2
    np.testing.assert_allclose(a.objects[0].box_min, [0.5, 1.5, 0.0])
    np.testing.assert_allclose(a.objects[0].box_max, [1.0, 2.0, 0.75])
    # Confidence = mean probability of the tokens making up "<bbox>...</bbox>", from the tokenizer's offsets.
    enc = tok(TEXT, return_offsets_mapping=True)
    for obj in a.objects:
        s, e = obj.span
        hit = [i for i, (ts, te) in enumerate(enc["offset_mapping"]) if ts < e and te > s]
        assert obj.confidence == pytest.approx(np.mean([model.probs[i] for i in hit]))
    assert a.timings["prefill_s"] == 0.25 and a.timings["sonata_s"] == 0.5 and "new_tokens" not in a.timings
    assert {"preprocess_s", "encode_s", "generate_s", "parse_s", "total_s"} <= set(a.timings)
    assert result.visual_embeds.shape == (3 * 210, HIDDEN) and result.visual_embeds.dtype == np.float32
    assert result.generated_ids.tolist() == model.ids and result.prompt_ids.dtype == np.int64


def test_faithful_random_mode_seeds_a_generator(tok):
    model = FakeModel(tok, "<answer>x</answer>")
    Reasoner(model, tok, deterministic=False, seed=7).answer(plane_scene(), "q", task="qa")
    g = model.calls["generator"]
    assert model.calls["deterministic"] is False
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(7)))
    assert model.calls["max_new_tokens"] == DEFAULT_MAX_NEW_TOKENS["qa"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(question="x" * 4001), "limit is 4000"),
    (dict(question="q", options=["o" * 4000]), "limit is 4000"),
    (dict(question="   "), "empty"),
    (dict(question="q", max_new_tokens=4_000_000_000), f"1..{MAX_NEW_TOKENS_CAP}"),
    (dict(question="q", max_new_tokens=-1), "max_new_tokens"),
    (dict(question="q", max_new_tokens=2.5), "integer"),
    (dict(question="q", task="caption"), "task"),
    (dict(question="q", task="ground", options=["A. x"]), "options"),
    (dict(question="q", options=[f"{i}" for i in range(27)]), "at most 26"),
])
def test_limits(tok, kwargs, match):
    model = FakeModel(tok, "<answer>x</answer>")
    r = Reasoner(model, tok)
    question = kwargs.pop("question")
    with pytest.raises(ValueError, match=match):
        r.answer(plane_scene(), question, **kwargs)
    assert "frames" not in model.calls  # rejected before any model work


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Reasoner.load(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="dtype"):
        Reasoner.load(str(tmp_path), dtype="float64")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Reasoner.load(str(tmp_path), device="cuda")


# ---- end to end on the tiny untrained model ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_reasoner():
    pytest.importorskip("gs_reasoner_ros.model.tiny", reason="the model package's tiny builder is not in the tree yet")
    return Reasoner.load(None, num_frames=2)


def test_tiny_end_to_end(tiny_reasoner):
    r = tiny_reasoner
    assert r.untrained
    scene = plane_scene(3)
    result = r.run(scene, "How far is the wall?", max_new_tokens=6)
    a = result.answer
    hidden = r.model.config.hidden_size
    assert a.untrained and a.keyframes_used == 2
    assert result.visual_embeds.shape == (2 * 210, hidden)
    assert np.all(np.isfinite(result.visual_embeds))
    assert result.last_logits.shape == (r.model.language_model.get_input_embeddings().num_embeddings,)
    gen = result.generated_ids.tolist()
    assert 1 <= len(gen) <= 6
    assert gen[0] == int(np.argmax(result.last_logits))  # greedy: first token from the last prompt logits
    assert len(gen) == 6 or gen[-1] in r.eos_token_ids
    assert a.text == r.tokenizer.decode(gen, skip_special_tokens=True)
    assert (a.think, a.answer) == parse_output(a.text)[:2]
    assert all(0.0 <= o.confidence <= 1.0 for o in a.objects)
    assert all(v >= 0 for v in a.timings.values())
    assert np.all((result.token_probs > 0) & (result.token_probs <= 1))
    # Deterministic mode: the same query gives the same tokens and logits.
    again = r.run(scene, "How far is the wall?", max_new_tokens=6)
    assert again.generated_ids.tolist() == gen
    np.testing.assert_array_equal(again.last_logits, result.last_logits)


# ---- caches: per-frame preprocessing, visual tokens, prompt prefix ------------------------


def _cold(scene, question, task="spatial", n=6):
    """A fresh reasoner (empty caches) answering one question."""
    r = Reasoner.load(None, num_frames=2)
    r.clear_caches()
    return r.run(scene, question, task=task, max_new_tokens=n)


def test_follow_up_reuses_the_prefix_and_equals_a_cold_run(tiny_reasoner):
    r = tiny_reasoner
    r.clear_caches()
    r.eos_token_ids, eos = [], r.eos_token_ids  # full-length answers: more tokens compared
    try:
        scene = plane_scene(3, seed=4)
        first = r.run(scene, "Where is the lamp?", max_new_tokens=6)
        follow = r.run(scene, "How big is the room?", task="qa", max_new_tokens=6)
        t1, t2 = first.answer.timings, follow.answer.timings
        assert (t1["visual_cache_hit"], t1["prefix_cache_hit"], t1["frames_preprocessed"]) == (0.0, 0.0, 2.0)
        assert (t2["visual_cache_hit"], t2["prefix_cache_hit"], t2["frames_preprocessed"]) == (1.0, 1.0, 0.0)
        for warm, question, task in ((first, "Where is the lamp?", "spatial"), (follow, "How big is the room?", "qa")):
            r2 = Reasoner.load(None, num_frames=2)
            r2.eos_token_ids = []
            cold = r2.run(scene, question, task=task, max_new_tokens=6)
            assert cold.answer.timings["prefix_cache_hit"] == 0.0
            assert warm.generated_ids.tolist() == cold.generated_ids.tolist()
            # Same tokens exactly; the floats to rounding: which GEMM kernel (and so the order of
            # the sums) oneDNN picks depends on the CPU and the cache length (2.7e-7 apart here).
            np.testing.assert_allclose(warm.token_probs, cold.token_probs, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(warm.last_logits, cold.last_logits, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(warm.visual_embeds, cold.visual_embeds, rtol=1e-5, atol=1e-6)
        # A moved keyframe or a new alignment is a new keyframe set; the frames' own work is kept.
        moved = plane_scene(3, seed=4)
        moved.poses[0, 0, 3] += 0.5
        t3 = r.run(moved, "Where is the lamp?", max_new_tokens=2).answer.timings
        assert (t3["visual_cache_hit"], t3["prefix_cache_hit"], t3["frames_preprocessed"]) == (0.0, 0.0, 0.0)
        moved.axis_align = np.diag([-1.0, -1.0, 1.0, 1.0])
        assert r.run(moved, "Where is the lamp?", max_new_tokens=2).answer.timings["visual_cache_hit"] == 0.0
        # New pixels in a keyframe: that frame is preprocessed again.
        moved.depth[2] += 0.25
        t5 = r.run(moved, "Where is the lamp?", max_new_tokens=2).answer.timings
        assert (t5["visual_cache_hit"], t5["frames_preprocessed"]) == (0.0, 1.0)
    finally:
        r.eos_token_ids = eos


def test_fixed_decoder_with_warm_up_gives_the_same_answers(tiny_reasoner):
    scene = plane_scene(3, seed=5)
    plain = Reasoner.load(None, num_frames=2).run(scene, "Where is the chair?", max_new_tokens=5)
    r = Reasoner.load(None, num_frames=2)
    seconds = r.setup_decoder(compile=False)  # what load() does on CUDA, eager here
    assert seconds == r.warmup_s > 0 and len(r.frame_cache) == 0  # the warm-up leaves no cache entries
    assert r.model.decoder.max_cache_len >= 2 * 210 + r.max_new_tokens_cap
    fixed = r.run(scene, "Where is the chair?", max_new_tokens=5)
    assert fixed.generated_ids.tolist() == plain.generated_ids.tolist()
    np.testing.assert_array_equal(fixed.token_probs, plain.token_probs)
    with pytest.raises(ValueError, match="KV cache holds"):
        r.model.generate(fixed.prompt_ids.tolist(), torch.as_tensor(fixed.visual_embeds), r.max_new_tokens_cap + 4000,
                         [])


def test_prepare_frames_does_the_per_frame_work_ahead(tiny_reasoner):
    r = tiny_reasoner
    r.clear_caches()
    scene = plane_scene(4, seed=6)
    assert r.prepare_frames(scene) == 4 and r.prepare_frames(scene) == 0
    assert r.answer(scene, "q", task="qa", max_new_tokens=1).timings["frames_preprocessed"] == 0.0


def test_frame_ids_skip_the_pixel_hash_and_change_nothing_else(tiny_reasoner, monkeypatch):
    from gs_reasoner_ros.model import preprocess

    r = tiny_reasoner
    r.eos_token_ids, eos = [], r.eos_token_ids
    try:
        plain = plane_scene(3, seed=7)
        r.clear_caches()
        reference = [r.run(plain, q, task=t, max_new_tokens=4) for q, t in (("Where is the bed?", "spatial"),
                                                                            ("Is it big?", "qa"))]

        def no_crc(*args):
            raise AssertionError("the scene has frame ids: no pixels may be hashed")

        monkeypatch.setattr(preprocess, "zlib", SimpleNamespace(crc32=no_crc))
        ided = Scene(plain.rgb, plain.depth, plain.intrinsics, plain.poses, frame_ids=["a", "b", "c"])
        r.clear_caches()
        first = r.run(ided, "Where is the bed?", max_new_tokens=4)
        follow = r.run(ided, "Is it big?", task="qa", max_new_tokens=4)
        assert follow.answer.timings["visual_cache_hit"] == follow.answer.timings["prefix_cache_hit"] == 1.0
        for got, want in zip((first, follow), reference):
            assert got.generated_ids.tolist() == want.generated_ids.tolist()
            np.testing.assert_array_equal(got.visual_embeds, want.visual_embeds)
            np.testing.assert_array_equal(got.last_logits, want.last_logits)
            assert got.answer.text == want.answer.text
    finally:
        r.eos_token_ids = eos
        r.clear_caches()
