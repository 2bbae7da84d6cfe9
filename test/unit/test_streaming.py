"""Streamed answers without ROS: the decoder hands each token over as it is made and stops when
told (leaving its caches valid), the stream parser reports each box when it closes with what the
whole-text parse gives, and the real tiny Reasoner streams the very answer it gives unstreamed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from gs_reasoner_ros.model.generation import GreedyDecoder
from gs_reasoner_ros.model.tokenizer import build_tiny_tokenizer
from gs_reasoner_ros.reasoner import Reasoner
from gs_reasoner_ros.reasoning import StreamParser, assign_confidences, parse_output, token_spans
from gs_reasoner_ros.scene import Scene

HIDDEN = 64


@pytest.fixture(scope="module")
def lm() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=512, initializer_range=0.1)
    return Qwen2ForCausalLM(cfg).eval().requires_grad_(False)


def embeds(n: int, seed: int) -> torch.Tensor:
    return torch.randn(1, n, HIDDEN, generator=torch.Generator().manual_seed(seed))


def test_on_token_sees_every_token_in_order_and_changes_nothing(lm):
    dec = GreedyDecoder(lm, max_cache_len=128)
    plain = dec.generate(embeds(9, 1), 12)
    seen = []
    streamed = dec.generate(embeds(9, 1), 12, on_token=lambda i, t, p: seen.append((i, t, p)))
    assert streamed.ids.tolist() == plain.ids.tolist()
    assert [i for i, _, _ in seen] == list(range(12))
    assert [t for _, t, _ in seen] == plain.ids.tolist()
    assert np.allclose([p for _, _, p in seen], plain.token_probs.numpy())


def test_eos_still_stops_a_stream(lm):
    dec = GreedyDecoder(lm, max_cache_len=128)
    ids = dec.generate(embeds(9, 2), 10).ids.tolist()
    seen = []
    out = dec.generate(embeds(9, 2), 10, eos_token_ids=[ids[3]], on_token=lambda i, t, p: seen.append(t))
    assert out.ids.tolist() == ids[:ids.index(ids[3]) + 1] == seen


def test_stopping_leaves_the_caches_valid(lm):
    """A stop after 3 tokens, then the same question and a follow-up on the cached prefix give
    exactly what a fresh decoder gives."""
    prefix, question = embeds(20, 3), embeds(5, 4)
    fresh = GreedyDecoder(lm, max_cache_len=128)
    key = fresh.prefill(prefix)
    expected = fresh.generate(question, 10, prefix_key=key).ids.tolist()
    follow_up = fresh.generate(embeds(4, 5), 10, prefix_key=key).ids.tolist()

    dec = GreedyDecoder(lm, max_cache_len=128)
    key = dec.prefill(prefix)
    stopped = dec.generate(question, 10, prefix_key=key, on_token=lambda i, t, p: i == 2)
    assert stopped.ids.tolist() == expected[:3]
    assert dec.has_prefix(key)
    assert dec.generate(question, 10, prefix_key=key).ids.tolist() == expected
    assert dec.generate(embeds(4, 5), 10, prefix_key=key).ids.tolist() == follow_up


TEXT = ("<think>Let me see. chair 2 <bbox>(0.1, 0.2, 0.0, 0.6, 0.7, 0.9)</bbox> <bbox>(1, 1, 0, 1.5, 1.4, 0.8)</bbox>, "
        "red mug 1 <bbox>(2.0, 0.5, 0.7, 2.1, 0.6, 0.8)</bbox> and a broken <bbox>(1, 2</bbox> one. Ünïcode ✓.</think>"
        "<answer>2.3 m</answer>")


def test_stream_parser_reports_each_box_when_it_closes_as_the_whole_parse_has_it():
    tok = build_tiny_tokenizer()
    ids = tok(TEXT).input_ids
    probs = np.linspace(0.1, 0.9, len(ids))
    parser, closed_at = StreamParser(tok), []
    for i, (t, p) in enumerate(zip(ids, probs)):
        progress = parser.feed(t, p)
        assert progress.tokens == i + 1 and TEXT.startswith(progress.text)
        closed_at += [(progress.text, b) for b in progress.new_objects]
    text, spans = token_spans(tok, ids)
    _, _, whole = parse_output(text)
    assign_confidences(whole, spans, probs)
    assert [(b.label, b.count) for _, b in closed_at] == [("chair", 2), ("chair", 2), ("red mug", 1)]
    assert len(whole) == 3
    for k, ((text_then, b), w) in enumerate(zip(closed_at, whole), 1):
        assert text_then.count("</bbox>") == k and "</bbox>" in text_then[-12:]  # with the token that closed it
        np.testing.assert_array_equal(b.box_min, w.box_min)
        np.testing.assert_array_equal(b.box_max, w.box_max)
        assert (b.label, b.span, b.confidence) == (w.label, w.span, w.confidence)
    assert parser.text == text


def test_token_spans_is_the_incremental_decoding_run_to_the_end():
    tok = build_tiny_tokenizer()
    ids = tok("größer ✓ 東京 <bbox>(1,2,3,4,5,6)</bbox>").input_ids
    text, spans = token_spans(tok, ids)
    assert text == tok.decode(ids, skip_special_tokens=True)
    assert len(spans) == len(ids) and spans[-1][1] == len(text)
    assert all(a[0] <= b[0] for a, b in zip(spans, spans[1:]))


def plane_scene(n_frames=2, h=24, w=32) -> Scene:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (n_frames, h, w, 3), dtype=np.uint8)
    depth = np.stack([np.full((h, w), 1.0 + i, np.float32) for i in range(n_frames)])
    k = np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]])
    poses = np.stack([np.eye(4) for _ in range(n_frames)])
    poses[:, 0, 3] = np.arange(n_frames) * 0.1
    return Scene(rgb, depth, k, poses)


@pytest.fixture(scope="module")
def tiny():
    return Reasoner.load(None, num_frames=2)


def test_the_tiny_model_streams_its_unstreamed_answer(tiny):
    scene = plane_scene()
    plain = tiny.run(scene, "How far is the wall?", max_new_tokens=12)
    updates = []
    streamed = tiny.answer(scene, "How far is the wall?", max_new_tokens=12, on_progress=updates.append)
    assert [u.tokens for u in updates] == list(range(1, len(plain.generated_ids) + 1))  # one per token, in order
    assert not streamed.stopped
    assert (streamed.text, streamed.answer, streamed.think) == (plain.answer.text, plain.answer.answer,
                                                                 plain.answer.think)
    assert updates[-1].text == streamed.text
    assert all(b.text.startswith(a.text) for a, b in zip(updates, updates[1:]))


def test_the_tiny_model_stops_when_told_and_answers_the_next_question_as_before(tiny):
    scene = plane_scene()
    before = tiny.run(scene, "Where is the door?", max_new_tokens=10).generated_ids.tolist()
    seen = []
    stopped = tiny.answer(scene, "Where is the door?", max_new_tokens=10,
                          on_progress=lambda u: seen.append(u.tokens) or u.tokens == 3)
    assert stopped.stopped and seen == [1, 2, 3]
    assert tiny.run(scene, "Where is the door?", max_new_tokens=10).generated_ids.tolist() == before
