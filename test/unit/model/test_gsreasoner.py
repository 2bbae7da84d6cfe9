"""The whole model on a tiny release-layout checkpoint: round trip, visual tokens against a
per-patch reference written from the notes, greedy decoding against transformers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gs_reasoner_ros.model import IMAGE_TOKEN_INDEX, GSReasonerForCausalLM
from gs_reasoner_ros.model.tiny import build_tiny_model
from gs_reasoner_ros.scene import Scene

VOCAB = 300


def _synthetic_scene() -> Scene:
    """One 480x640 frame: a wavy surface 1-3 m away, a hole of invalid depth, a tilted camera."""
    v, u = np.mgrid[0:480, 0:640].astype(np.float32)
    depth = 2.0 + 0.6 * np.sin(u / 40.0) * np.cos(v / 55.0) + 0.002 * (u - 320)
    depth[100:150, 200:260] = 0.0  # no measurement: these unproject to the camera centre
    rgb = np.stack([(u * 0.4) % 256, (v * 0.5) % 256, (u + v) % 256], -1).astype(np.uint8)
    pose = np.eye(4)
    c, s = math.cos(0.4), math.sin(0.4)
    pose[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    pose[:3, 3] = [0.5, -1.0, 1.2]
    k = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    return Scene(rgb[None], depth[None].astype(np.float32), k, pose[None])


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(VOCAB, seed=0)


@pytest.fixture(scope="module")
def inputs(model):
    return model.preprocess(_synthetic_scene(), [0])


@pytest.fixture(scope="module")
def visual(model, inputs):
    return model.encode_visual(*inputs)


@pytest.fixture(scope="module")
def loaded(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("gsr")
    model.save_pretrained(path)
    return GSReasonerForCausalLM.from_pretrained(path)


PROMPT = [5, 17, 3, IMAGE_TOKEN_INDEX, 198 % VOCAB, 42, 7, 99]


# Patches checked against the reference: corners, the invalid-depth hole (patch rows 2-3,
# columns 3-5 after resize and crop), and a spread of others.
CHECKED_PATCHES = [(0, 0), (0, 13), (13, 0), (13, 13), (2, 3), (2, 4), (3, 4), (3, 5), (6, 7), (9, 2), (11, 10)]


def _reference_visual_tokens(model, pixel_values, world_coords, patches):
    """The authors' visual pipeline for one frame, spelled out patch by patch (notes §1.3–1.8):
    the (i, j) token of each listed patch, and the newline embedding."""
    with torch.no_grad():
        hidden = model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-1][0]  # no post-LN

        def pool(x):  # 27x27 -> 14x14, bilinear, align_corners=False
            grid = x.view(1, 27, 27, -1).permute(0, 3, 1, 2)
            return F.interpolate(grid, size=(14, 14), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)

        image_tokens, queries = pool(model.mm_projector(hidden)), pool(hidden)
        offsets = [round(k * 26 / 7) for k in range(8)]
        pix, world = pixel_values[0], world_coords[0]
        points, colors = [], []
        for i in range(14):  # Sonata sees all frames' samples as one cloud, patch by patch
            for j in range(14):
                for a in offsets:
                    for b in offsets:
                        points.append(world[27 * i + a, 27 * j + b])
                        colors.append((pix[:, 27 * i + a, 27 * j + b] + 1) / 2)
        points, colors = torch.stack(points), torch.stack(colors)
        features = model.spatial_encoder(points, colors, deterministic=True)
        pos_w, pos_b = model.pointnet_pooling.mlp.weight, model.pointnet_pooling.mlp.bias
        att = model.ada_crossattn
        hidden_size = model.config.hidden_size
        per_axis = hidden_size // 3
        tokens = {}
        for i, j in patches:
            p = i * 14 + j
            f, x = features[64 * p:64 * (p + 1)], points[64 * p:64 * (p + 1)]
            centre = world[27 * i + 13, 27 * j + 13]
            w = 1.0 / (torch.linalg.norm(x - centre, dim=-1) + 1e-8)
            position = ((f @ pos_w.T + pos_b) * (w / w.sum())[:, None]).sum(0)
            q, k, v = att.q_proj(queries[i, j]), att.k_proj(f), att.v_proj(f)
            heads = []
            for h in range(8):
                part = slice(154 * h, 154 * (h + 1))
                heads.append(torch.softmax(k[:, part] @ q[part] / math.sqrt(154), 0) @ v[:, part])
            spatial = model.mm_spatial_projector(torch.cat([position, torch.cat(heads)]))
            pe = torch.zeros(hidden_size)
            for axis in range(3):
                for n in range(per_axis):
                    phase = float(centre[axis]) / 10000 ** (2 * (n // 2) / per_axis)
                    pe[axis * per_axis + n] = math.sin(phase) if n % 2 == 0 else math.cos(phase)
            tokens[i, j] = image_tokens[i, j] + spatial + pe
        return tokens, model.image_newline


def test_visual_tokens_match_the_per_patch_reference(model, inputs, visual):
    assert visual.shape == (210, model.config.hidden_size)
    tokens, newline = _reference_visual_tokens(model, *inputs, CHECKED_PATCHES)
    for (i, j), token in tokens.items():
        torch.testing.assert_close(visual[15 * i + j], token, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(visual[14::15], newline.expand(14, -1), rtol=0, atol=0)
    assert set(model.timings) == {"siglip_s", "sonata_s", "pooling_s"}


def test_round_trip_gives_identical_outputs(model, loaded, inputs, visual):
    again = loaded.encode_visual(*inputs)
    torch.testing.assert_close(again, visual, rtol=1e-6, atol=1e-6)
    a = model.generate(PROMPT, visual, 6, [])
    b = loaded.generate(PROMPT, again, 6, [])
    assert a.ids == b.ids
    torch.testing.assert_close(a.last_prompt_logits, b.last_prompt_logits, rtol=1e-5, atol=1e-5)


def test_greedy_decoding_equals_transformers_generate(model, visual):
    free = model.generate(PROMPT, visual, 8, [])
    assert len(free.ids) == 8
    embeds = model.embed_prompt(PROMPT, visual)[None]
    with torch.no_grad():
        expected = model.language_model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2]),
                                                 max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert free.ids == expected[0, -8:].tolist()
    stop = free.ids[3]
    stopped = model.generate(PROMPT, visual, 8, [stop, VOCAB + 5])
    assert stopped.ids == free.ids[:free.ids.index(stop) + 1]  # the stop token is kept


def test_probabilities_and_prompt_logits_match_a_full_forward(model, visual):
    out = model.generate(PROMPT, visual, 5, [])
    embeds = model.embed_prompt(PROMPT, visual)
    generated = model.language_model.get_input_embeddings()(torch.tensor(out.ids[:-1]))
    with torch.no_grad():
        logits = model.language_model(inputs_embeds=torch.cat([embeds, generated])[None]).logits[0]
    prompt_len = embeds.shape[0]
    assert prompt_len == len(PROMPT) - 1 + 210
    torch.testing.assert_close(out.last_prompt_logits, logits[prompt_len - 1], rtol=1e-4, atol=1e-4)
    for step, (token, prob) in enumerate(zip(out.ids, out.token_probs)):
        row = logits[prompt_len - 1 + step]
        assert token == int(row.argmax())
        assert prob == pytest.approx(float(torch.softmax(row, -1)[token]), rel=1e-4)
    assert out.timings["new_tokens"] == 5 and out.timings["prompt_tokens"] == prompt_len


def test_visual_tokens_replace_the_placeholder(model, visual):
    embeds = model.embed_prompt(PROMPT, visual)
    table = model.language_model.get_input_embeddings().weight
    at = PROMPT.index(IMAGE_TOKEN_INDEX)
    assert torch.equal(embeds[at:at + 210], visual)
    assert torch.equal(embeds[:at], table[PROMPT[:at]]) and torch.equal(embeds[at + 210:], table[PROMPT[at + 1:]])


@pytest.mark.parametrize("prompt, message", [
    ([1, 2, 3], "exactly one IMAGE_TOKEN_INDEX"),
    ([1, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX], "exactly one IMAGE_TOKEN_INDEX"),
    ([1, IMAGE_TOKEN_INDEX, VOCAB], "outside the vocabulary"),
    ([-5, IMAGE_TOKEN_INDEX], "outside the vocabulary"),
])
def test_bad_prompts(model, visual, prompt, message):
    with pytest.raises(ValueError, match=message):
        model.generate(prompt, visual, 2, [])


def test_bad_visual_inputs(model, inputs):
    pixels, coords = inputs
    with pytest.raises(ValueError, match="pixel_values must be"):
        model.encode_visual(pixels[:, :, :100], coords)
    with pytest.raises(ValueError, match="world_coords must be"):
        model.encode_visual(pixels, coords[:, :, :, :2])
    bad = coords.clone()
    bad[0, 5, 5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.encode_visual(pixels, bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(PROMPT, torch.zeros(210, model.config.hidden_size), -1, [])


def test_sonata_gets_the_mode_and_the_samples(model, inputs, monkeypatch):
    calls = []

    def spy(coord, color, *, deterministic=True, generator=None):
        calls.append((coord, color, deterministic, generator))
        return torch.zeros(coord.shape[0], 1232)

    monkeypatch.setattr(model.spatial_encoder, "forward", spy)
    generator = torch.Generator().manual_seed(7)
    model.encode_visual(*inputs, deterministic=False, generator=generator)
    coord, color, deterministic, passed = calls[0]
    assert deterministic is False and passed is generator
    assert coord.shape == (196 * 64, 3) and coord.dtype == torch.float32
    pixels, world = inputs
    # point 64*p + 8*a + b of patch p = (i, j) is pixel (27i + offset[a], 27j + offset[b])
    i, j, a, b = 3, 10, 5, 2
    row, col = 27 * i + [0, 4, 7, 11, 15, 19, 22, 26][a], 27 * j + [0, 4, 7, 11, 15, 19, 22, 26][b]
    index = 64 * (14 * i + j) + 8 * a + b
    assert torch.equal(coord[index], world[0, row, col])
    torch.testing.assert_close(color[index], (pixels[0, :, row, col] + 1) / 2, rtol=0, atol=1e-6)
    assert 0.0 <= float(color.min()) and float(color.max()) <= 1.0


def test_bfloat16_rounds_coordinates_and_keeps_sonata_in_float32(model, loaded, tmp_path):
    model.save_pretrained(tmp_path)
    bf16 = GSReasonerForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.vision_dtype == torch.bfloat16  # float16 only on CUDA
    assert all(p.dtype == torch.float32 for p in bf16.spatial_encoder.parameters())
    assert bf16.language_model.model.rotary_emb.inv_freq.dtype == torch.float32
    scene = _synthetic_scene()
    pixels, coords = bf16.preprocess(scene, [0])
    _, coords32 = loaded.preprocess(scene, [0])
    assert coords.dtype == torch.bfloat16 and torch.equal(coords, coords32.bfloat16())
    assert pixels.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_tokens_equals_bilinear_pool(dtype):
    from gs_reasoner_ros.model.fusion import bilinear_pool
    from gs_reasoner_ros.model.modeling import pool_tokens

    x = torch.randn(3, 27 * 27, 40, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(pool_tokens(x, 2), bilinear_pool(x, 2))
    with pytest.raises(ValueError, match="square"):
        pool_tokens(x[:, :700], 2)


def test_prefix_key_gives_the_same_tokens_and_prefills_only_the_rest(model, visual):
    whole = model.generate(PROMPT, visual, 6, [])
    cold = model.generate(PROMPT, visual, 6, [], prefix_key="kf")
    other = list(PROMPT)
    other[-1] = (other[-1] + 1) % VOCAB
    warm = model.generate(other, visual, 6, [], prefix_key="kf")
    assert not cold.timings["prefix_cache_hit"] and warm.timings["prefix_cache_hit"]
    split = PROMPT.index(IMAGE_TOKEN_INDEX) + visual.shape[0]
    assert warm.timings["prefilled_tokens"] == len(PROMPT) - 1 + visual.shape[0] - split
    assert cold.ids == whole.ids  # the two-pass prefill decodes like one pass here (fp32)
    torch.testing.assert_close(cold.last_prompt_logits, whole.last_prompt_logits, rtol=1e-5, atol=1e-5)
    again = model.generate(other, visual, 6, [])  # the other question with no cache
    assert warm.ids == again.ids
    assert model.generate(PROMPT, visual, 0, []).ids == []
