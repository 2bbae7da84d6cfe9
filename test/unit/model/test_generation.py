"""GreedyDecoder against plain greedy decoding with transformers on a tiny random Qwen2 (CPU, fp32)."""
from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from gs_reasoner_ros.model import decode_attention as split_attention
from gs_reasoner_ros.model.generation import GreedyDecoder

HIDDEN = 64


@pytest.fixture(scope="module")
def lm() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, max_position_embeddings=512,
        initializer_range=0.1,  # spread-out logits: no near-ties for argmax to flip on
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(cfg).eval().requires_grad_(False)  # as checkpoint loading leaves it
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def embeds(n: int, seed: int) -> torch.Tensor:
    return torch.randn(1, n, HIDDEN, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def naive_greedy(lm, prompt: torch.Tensor, n: int, eos: set[int] = frozenset()):
    """Textbook greedy loop: full forward on the prompt, then one token at a time with the
    dynamic cache; returns ids, chosen-token probabilities and the last prompt logits."""
    out = lm(inputs_embeds=prompt, use_cache=True)
    logits, past = out.logits[0, -1].float(), out.past_key_values
    first_logits = logits.clone()
    ids, probs = [], []
    for _ in range(n):
        tok = int(torch.argmax(logits))
        ids.append(tok)
        probs.append(float(torch.softmax(logits, -1)[tok]))
        if tok in eos:
            break
        out = lm(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        logits, past = out.logits[0, -1].float(), out.past_key_values
    return ids, probs, first_logits


# the tiny model lives on the CPU: the kernel runs there in Triton's interpreter (conftest sets it
# up where no GPU exists); on a GPU machine these cases skip and test_decode_attention covers CUDA
needs_triton = pytest.mark.skipif(not split_attention.available(torch.device("cpu")),
                                  reason="Triton's interpreter is not set up (no triton, or a GPU machine)")
ATTENTIONS = ["matmul", "sdpa", pytest.param("triton", marks=needs_triton)]


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_matches_transformers_generate_and_naive_loop(lm, attention):
    prompt = embeds(37, seed=1)
    dec = GreedyDecoder(lm, max_cache_len=128, decode_attention=attention)
    assert dec.decode_attention == attention
    dec.warmup()
    ids, probs, last_logits = dec.generate(prompt, max_new_tokens=20)

    ref_ids, ref_probs, ref_logits = naive_greedy(lm, prompt, 20)
    hf = lm.generate(inputs_embeds=prompt, max_new_tokens=20, do_sample=False)
    assert ids.tolist() == ref_ids == hf[0].tolist()
    assert len(set(ref_ids)) > 2, "degenerate reference sequence"
    torch.testing.assert_close(last_logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, torch.tensor(ref_probs), rtol=1e-5, atol=1e-6)


def test_stops_after_eos_and_keeps_it(lm):
    prompt = embeds(23, seed=2)
    ref_ids, _, _ = naive_greedy(lm, prompt, 20)
    # an id whose first occurrence is at index k >= 1, so stopping there is observable
    k, eos = next((i, t) for i, t in enumerate(ref_ids) if i >= 1 and t not in ref_ids[:i])
    dec = GreedyDecoder(lm, max_cache_len=64)
    ids, probs, _ = dec.generate(prompt, max_new_tokens=20, eos_token_ids=[299, eos])
    assert ids.tolist() == ref_ids[: k + 1]
    assert probs.shape == ids.shape
    # eos as the very first token
    ids, _, _ = dec.generate(prompt, max_new_tokens=20, eos_token_ids=ref_ids[0])
    assert ids.tolist() == ref_ids[:1]


def test_prefix_cache_follow_up_equals_decoding_from_scratch(lm):
    prefix, q1, q2 = embeds(40, seed=3), embeds(7, seed=4), embeds(11, seed=5)
    dec = GreedyDecoder(lm, max_cache_len=128)
    key = dec.prefill(prefix, key="keyframes-a")
    assert key == "keyframes-a" and dec.has_prefix(key)
    for q in (q1, q2, q1):  # second question runs after the first's decode wrote past the prefix
        got = dec.generate(q, max_new_tokens=15, prefix_key=key)
        full = torch.cat([prefix, q], dim=1)
        ref_ids, _, ref_logits = naive_greedy(lm, full, 15)
        assert got.ids.tolist() == ref_ids
        torch.testing.assert_close(got.last_prompt_logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_several_prefixes_and_invalidation(lm):
    pa, pb, q = embeds(30, seed=6), embeds(25, seed=7), embeds(5, seed=8)
    ref_a, _, _ = naive_greedy(lm, torch.cat([pa, q], 1), 10)
    ref_b, _, _ = naive_greedy(lm, torch.cat([pb, q], 1), 10)
    assert ref_a != ref_b

    two = GreedyDecoder(lm, max_cache_len=128, max_prefixes=2)
    ka, kb = two.prefill(pa), two.prefill(pb)
    assert ka != kb
    assert two.generate(q, 10, prefix_key=ka).ids.tolist() == ref_a  # restored from its copy
    assert two.generate(q, 10, prefix_key=kb).ids.tolist() == ref_b
    assert two.generate(q, 10, prefix_key=ka).ids.tolist() == ref_a

    one = GreedyDecoder(lm, max_cache_len=128, max_prefixes=1)
    ka = one.prefill(pa)
    one.prefill(pb, key="b")
    with pytest.raises(ValueError, match="no cached prefix"):
        one.generate(q, 10, prefix_key=ka)
    # decoding a whole prompt overwrites the cache from position 0: the prefix must be gone
    one.generate(q, 3)
    with pytest.raises(ValueError, match="no cached prefix"):
        one.generate(q, 10, prefix_key="b")


def test_chunked_prefill_gives_the_same_answer(lm):
    prompt = embeds(45, seed=9)
    whole = GreedyDecoder(lm, max_cache_len=128).generate(prompt, 12)
    chunked = GreedyDecoder(lm, max_cache_len=128, prefill_chunk=16).generate(prompt, 12)
    assert chunked.ids.tolist() == whole.ids.tolist()
    torch.testing.assert_close(chunked.last_prompt_logits, whole.last_prompt_logits, rtol=1e-5, atol=1e-5)


def test_bad_input_is_a_clear_error(lm):
    dec = GreedyDecoder(lm, max_cache_len=64)
    with pytest.raises(ValueError, match="hidden size"):
        dec.generate(torch.zeros(1, 4, HIDDEN + 1), 4)
    with pytest.raises(ValueError, match=r"\(1, T, hidden\)"):
        dec.generate(torch.zeros(4, HIDDEN), 4)
    with pytest.raises(ValueError, match="max_cache_len"):
        dec.generate(embeds(60, seed=0), 10)
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.generate(embeds(4, seed=0), 0)
    with pytest.raises(ValueError, match="CUDA"):
        GreedyDecoder(lm, use_cuda_graphs=True)


def test_failed_compile_falls_back_to_eager_steps(lm, monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    prompt = embeds(20, seed=10)
    dec = GreedyDecoder(lm, max_cache_len=64, compile=True)
    with caplog.at_level("WARNING"):
        dec.warmup()
    assert "no compiler here" in caplog.text and dec.compile is False
    assert dec.generate(prompt, 8).ids.tolist() == naive_greedy(lm, prompt, 8)[0]


def test_attention_lengths_cover_the_position(lm):
    dec = GreedyDecoder(lm, max_cache_len=300, attention_bucket=100)  # cache 320, buckets of 128
    assert dec.attention_lengths == (128, 256, 320)
    assert [dec.attention_length(p) for p in (0, 127, 128, 255, 256, 319)] == [128, 128, 256, 256, 320, 320]
    with pytest.raises(ValueError, match="outside the cache"):
        dec.attention_length(320)
    assert GreedyDecoder(lm, max_cache_len=300, attention_bucket=None).attention_lengths == (320,)
    with pytest.raises(ValueError, match="attention_bucket"):
        GreedyDecoder(lm, max_cache_len=64, attention_bucket=0)


def poison_cache(dec: GreedyDecoder, first_slot: int) -> None:
    """NaN in every cache slot from `first_slot` on: one read of them would poison the answer."""
    for t in dec.stack.cache.tensors():
        t[:, :, first_slot:] = float("nan")


def assert_matches_naive_loop(lm, got, prompt) -> list[int]:
    """The decoder's ids and probabilities equal the textbook loop's; returns the ids."""
    ref_ids, ref_probs, _ = naive_greedy(lm, prompt, len(got.ids))
    assert got.ids.tolist() == ref_ids
    torch.testing.assert_close(got.token_probs, torch.tensor(ref_probs), rtol=1e-5, atol=1e-6)
    return ref_ids


@pytest.mark.parametrize("attention", ["matmul", "sdpa"])
def test_answer_crossing_attention_buckets_matches_naive_loop(lm, attention):
    # positions 50..89 cross the 64-slot bucket; slots past 128 hold NaN, which the step must
    # never read (a whole-cache step would: 0 * NaN through the masked positions)
    prompt = embeds(50, seed=11)
    dec = GreedyDecoder(lm, max_cache_len=256, attention_bucket=64, decode_attention=attention)
    dec.warmup()
    poison_cache(dec, 128)
    ref_ids = assert_matches_naive_loop(lm, dec.generate(prompt, max_new_tokens=40), prompt)
    # the same NaN poisons a decoder that attends over the whole cache: the test can fail
    whole = GreedyDecoder(lm, max_cache_len=256, attention_bucket=None, decode_attention=attention)
    poison_cache(whole, 128)
    assert whole.generate(prompt, max_new_tokens=40).ids.tolist() != ref_ids


@needs_triton
def test_split_attention_never_reads_past_the_position(lm):
    # slots after the newest position hold NaN: one read of them would poison the answer
    prompt = embeds(50, seed=11)
    dec = GreedyDecoder(lm, max_cache_len=256, decode_attention="triton", decode_splits=4)
    assert dec.attention_lengths == (256,)  # one step (one CUDA graph) for every position
    dec.warmup()
    poison_cache(dec, 50)
    assert_matches_naive_loop(lm, dec.generate(prompt, max_new_tokens=30), prompt)


def test_fused_projections_share_the_weights_and_keep_the_model(lm):
    attn, mlp = lm.model.layers[0].self_attn, lm.model.layers[0].mlp
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    prompt = embeds(9, seed=12)
    with torch.no_grad():
        logits_before = lm(inputs_embeds=prompt).logits
    dec = GreedyDecoder(lm, max_cache_len=64)
    fused = dec.fused[0]
    assert fused is not None
    # the layers now read rows of the fused tensors: same values, no second copy
    assert fused.qkv_weight.data_ptr() == attn.q_proj.weight.data_ptr()
    assert attn.v_proj.weight.data_ptr() == fused.qkv_weight[-attn.v_proj.weight.shape[0]:].data_ptr()
    assert fused.gate_up_weight.data_ptr() == mlp.gate_proj.weight.data_ptr()
    for name, p in lm.named_parameters():
        assert torch.equal(p, before[name]), name
    with torch.no_grad():
        torch.testing.assert_close(lm(inputs_embeds=prompt).logits, logits_before, rtol=0, atol=0)
    # a second decoder finds them fused already and copies nothing
    again = GreedyDecoder(lm, max_cache_len=64)
    assert again.fused[0].qkv_weight.data_ptr() == fused.qkv_weight.data_ptr()
    assert again.generate(prompt, 6).ids.tolist() == naive_greedy(lm, prompt, 6)[0]


def test_projections_that_train_are_not_fused():
    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50)
    model = Qwen2ForCausalLM(cfg)  # parameters require grad: an optimizer may hold them
    q_weight = model.model.layers[0].self_attn.q_proj.weight
    dec = GreedyDecoder(model, max_cache_len=64)
    assert dec.fused == [None]
    assert model.model.layers[0].self_attn.q_proj.weight is q_weight
    assert GreedyDecoder(model.requires_grad_(False), max_cache_len=64, fuse_projections=False).fused == [None]
