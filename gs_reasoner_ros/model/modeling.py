"""GS-Reasoner: SigLIP + Sonata + dual-path pooling + Qwen2, as released.

The visual side turns F posed frames into F*210 embeddings that replace the single <image>
placeholder of a ChatML prompt; the language model is transformers' Qwen2ForCausalLM fed with
inputs_embeds. Loading and saving the release's checkpoint layout live in checkpoint.py.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2ForCausalLM, SiglipVisionModel

from gs_reasoner_ros.model.configuration import (IMAGE_TOKEN_INDEX, POSITION_PATH_SIZE, SONATA_HIDDEN_SIZE,
                                                 GSReasonerConfig)
from gs_reasoner_ros.model.fusion import (InverseDistancePooling, SemanticCrossAttention, SinePositionEncoding3D,
                                          add_row_newlines, patch_centers, sample_patch_points)
from gs_reasoner_ros.model.preprocess import preprocess_frames


@dataclass
class GenerationOutput:
    """Greedy decoding result: generated ids (the stop token included when reached), the
    probability the model gave each of them, the logits at the last prompt position, timings."""

    ids: list[int]
    token_probs: list[float]
    last_prompt_logits: torch.Tensor
    timings: dict = field(default_factory=dict)


class GSReasonerForCausalLM(nn.Module):
    """The whole model. Attribute names follow the release (`mm_projector`, `spatial_encoder`,
    `pointnet_pooling`, `ada_crossattn`, ...) so the checkpoint key map stays a prefix table."""

    def __init__(self, config: GSReasonerConfig, vision_tower: str | os.PathLike | None = None):
        super().__init__()
        from gs_reasoner_ros.model.sonata import Sonata

        self.config = config
        self.siglip_geometry = config.siglip_geometry(vision_tower)
        vision_config = config.vision_config(vision_tower)
        hidden = config.hidden_size
        self.vision_tower = SiglipVisionModel(vision_config)
        self.mm_projector = nn.Sequential(nn.Linear(config.mm_hidden_size, hidden), nn.GELU(),
                                          nn.Linear(hidden, hidden))
        self.image_newline = nn.Parameter(torch.randn(hidden) / hidden ** 0.5)
        self.spatial_encoder = Sonata(config.sonata_config())
        self.pointnet_pooling = InverseDistancePooling(SONATA_HIDDEN_SIZE, POSITION_PATH_SIZE)
        self.ada_crossattn = SemanticCrossAttention(config.mm_hidden_size, SONATA_HIDDEN_SIZE, num_heads=8)
        self.mm_spatial_projector = nn.Sequential(
            nn.Linear(POSITION_PATH_SIZE + SONATA_HIDDEN_SIZE, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.world_position_embedding = SinePositionEncoding3D(hidden)
        self.language_model = Qwen2ForCausalLM(config.text_config())
        self.image_size = vision_config.image_size
        patches = vision_config.image_size // vision_config.patch_size  # 27
        self.pool_stride = int(config.mm_spatial_pool_stride)
        self.grid = -(-patches // self.pool_stride)  # 14 tokens per side after pooling
        self.tokens_per_frame = self.grid * (self.grid + 1)  # 210 with the row newlines
        self.timings: dict[str, float] = {}
        self.decoder = None  # GreedyDecoder: setup_decoder(), or made on demand by generate()
        self._decoder_fixed = False
        self.spatial_encoder.float()

    # ---- placement -------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    @property
    def vision_dtype(self) -> torch.dtype:
        return self.vision_tower.embeddings.patch_embedding.weight.dtype

    def set_vision_dtype(self, dtype: torch.dtype | None = None) -> "GSReasonerForCausalLM":
        """Run SigLIP in `dtype`; None picks the authors' choice: float16 when the model runs in
        bfloat16 on CUDA, else the model's dtype."""
        if dtype is None:
            dtype = torch.float16 if self.dtype == torch.bfloat16 and self.device.type == "cuda" else self.dtype
        self.vision_tower.to(dtype)
        return self

    # ---- loading and saving (official layout, see checkpoint.py) -----------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, vision_tower: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        vision_dtype: torch.dtype | None = None) -> "GSReasonerForCausalLM":
        """Load a checkpoint folder in the release layout (config.json + safetensors, original key
        names). vision_tower: a SigLIP folder for the architecture and, when the checkpoint lacks
        them, the vision weights. Sonata always runs in float32. Returns an eval-mode model with
        gradients switched off."""
        from gs_reasoner_ros.model.checkpoint import load_pretrained

        return load_pretrained(cls, path, vision_tower=vision_tower, device=device, dtype=dtype,
                               vision_dtype=vision_dtype)

    def save_pretrained(self, path: str | os.PathLike, tokenizer=None, max_shard_size: int | None = None):
        """Write config.json and the weights under the release's key names (+ tokenizer files)."""
        from gs_reasoner_ros.model.checkpoint import save_pretrained

        return save_pretrained(self, path, tokenizer=tokenizer, max_shard_size=max_shard_size)

    # ---- visual tokens -----------------------------------------------------------------

    def preprocess(self, scene, frame_indices: Sequence[int], cache=None, keys=None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel values (F,3,384,384) and world coordinates (F,384,384,3) in the model frame, on the
        model's device and in its dtype (bf16 rounding of the coordinates is the authors' too).

        cache: a preprocess.FrameCache keeping the per-frame work across calls (same values);
        keys: its add() keys for these frames, when already known."""
        to = dict(device=self.device, dtype=self.dtype)
        if cache is not None:
            pixels, coords = cache.inputs(scene, frame_indices, keys)
            return pixels.to(**to), coords.to(**to)
        pixels, coords = preprocess_frames(scene, frame_indices, crop=self.image_size)
        return torch.from_numpy(pixels).to(**to), torch.from_numpy(coords).to(**to)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(F,3,S,S) -> (F, 729, mm_hidden): hidden state of the last kept SigLIP layer, no post-LN."""
        tower = self.vision_tower
        hidden = tower.embeddings(pixel_values.to(device=self.device, dtype=self.vision_dtype))
        hidden = tower.encoder(inputs_embeds=hidden).last_hidden_state
        return hidden.to(self.dtype)

    def encode_visual(self, pixel_values: torch.Tensor, world_coords: torch.Tensor, deterministic: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """(F,3,S,S) pixel values in [-1,1] and (F,S,S,3) world coordinates in metres -> the
        (F*210, hidden) embeddings that replace <image>. deterministic=False reproduces the
        authors' random voxel sampling and serialization order in Sonata (seed with `generator`).
        Stage times in seconds are left in `self.timings`."""
        self._check_visual_inputs(pixel_values, world_coords)
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        world_coords = world_coords.to(device=self.device, dtype=self.dtype)
        frames, n_points = pixel_values.shape[0], self.config.n_points
        timer = _StageTimer(self.device)

        with timer("siglip_s"):
            siglip = self.vision_features(pixel_values)
            semantic = pool_tokens(siglip.detach(), self.pool_stride)
            projected = pool_tokens(self.mm_projector(siglip), self.pool_stride)

        with timer("sonata_s"):
            points = sample_patch_points(world_coords, self.grid, n_points)
            colors = sample_patch_points(pixel_values.permute(0, 2, 3, 1), self.grid, n_points)
            # The authors go through 0..255 and back (Sonata's NormalizeColor); keep their rounding.
            colors = ((colors + 1) / 2 * 255).float() / 255
            features = self.spatial_encoder(points.reshape(-1, 3).float(), colors.reshape(-1, 3),
                                            deterministic=deterministic, generator=generator)
            if features.shape != (points.shape[0] * self.grid ** 2 * n_points, SONATA_HIDDEN_SIZE):
                raise ValueError(f"Sonata returned {tuple(features.shape)}, expected "
                                 f"({points.numel() // 3}, {SONATA_HIDDEN_SIZE})")

        with timer("pooling_s"):
            features = features.view(frames, self.grid ** 2, n_points, SONATA_HIDDEN_SIZE)
            points = points.reshape(frames, self.grid ** 2, n_points, 3)
            centers = patch_centers(world_coords, self.grid).reshape(frames, self.grid ** 2, 3)
            tokens = self._fuse(projected, semantic, features.to(self.dtype), points, centers)
            visual = add_row_newlines(tokens, self.image_newline)
        self.timings = timer.times
        return visual

    def _fuse(self, projected, semantic, features, points, centers) -> torch.Tensor:
        """(F, g*g, hidden) tokens: projected SigLIP + spatial projector(dual path) + sine PE."""
        position_path = self.pointnet_pooling(features, points, centers)
        semantic_path = self.ada_crossattn(semantic, features)
        spatial = self.mm_spatial_projector(torch.cat([position_path, semantic_path], dim=-1))
        return projected + spatial + self.world_position_embedding(centers)

    def _check_visual_inputs(self, pixel_values: torch.Tensor, world_coords: torch.Tensor) -> None:
        s = self.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(f"pixel_values must be (F,3,{s},{s}), got {tuple(pixel_values.shape)}")
        if world_coords.shape != (pixel_values.shape[0], s, s, 3):
            raise ValueError(f"world_coords must be ({pixel_values.shape[0]},{s},{s},3) to match pixel_values, "
                             f"got {tuple(world_coords.shape)}")
        if pixel_values.shape[0] == 0:
            raise ValueError("no frames: pixel_values is empty")
        if not torch.isfinite(world_coords).all():
            raise ValueError("world_coords contain NaN or Inf")

    # ---- text ------------------------------------------------------------------------

    def embed_prompt(self, prompt_ids: Sequence[int], visual: torch.Tensor) -> torch.Tensor:
        """(L-1+V, hidden) input embeddings: the prompt's token embeddings with the visual tokens in
        place of its single IMAGE_TOKEN_INDEX entry."""
        ids = [int(i) for i in prompt_ids]
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise ValueError(f"prompt_ids must contain exactly one IMAGE_TOKEN_INDEX ({IMAGE_TOKEN_INDEX}), "
                             f"found {ids.count(IMAGE_TOKEN_INDEX)}")
        vocab = self.language_model.get_input_embeddings().num_embeddings
        bad = sorted({i for i in ids if i != IMAGE_TOKEN_INDEX and not 0 <= i < vocab})
        if bad:
            raise ValueError(f"prompt_ids {bad[:10]} are outside the vocabulary (size {vocab})")
        if visual.ndim != 2 or visual.shape[1] != self.config.hidden_size:
            raise ValueError(f"visual must be (N, {self.config.hidden_size}), got {tuple(visual.shape)}")
        at = ids.index(IMAGE_TOKEN_INDEX)
        text = torch.tensor(ids[:at] + ids[at + 1:], dtype=torch.long, device=self.device)
        embedded = self.language_model.get_input_embeddings()(text)
        return torch.cat([embedded[:at], visual.to(device=self.device, dtype=self.dtype), embedded[at:]])

    # ---- decoding ----------------------------------------------------------------------

    def setup_decoder(self, max_cache_len: int, *, compile: bool | str = "auto", use_cuda_graphs: bool | str = "auto",
                      warmup: bool = True):
        """Give generate() a GreedyDecoder with a static KV cache of max_cache_len positions
        (compiled and CUDA-graphed on CUDA unless told otherwise), warmed up now when `warmup`.
        Returns it. Without this, generate() uses an eager decoder sized to each request."""
        from gs_reasoner_ros.model.generation import GreedyDecoder

        self.decoder = GreedyDecoder(self.language_model, max_cache_len=max_cache_len, compile=compile,
                                     use_cuda_graphs=use_cuda_graphs)
        self._decoder_fixed = True
        if warmup:
            self.decoder.warmup()
        return self.decoder

    def _decoder_for(self, length: int):
        """The configured decoder, or an eager one grown to fit `length` positions."""
        from gs_reasoner_ros.model.generation import GreedyDecoder

        decoder = getattr(self, "decoder", None)
        if decoder is not None and length <= decoder.max_cache_len:
            return decoder
        if decoder is not None and getattr(self, "_decoder_fixed", False):
            raise ValueError(f"prompt and new tokens need {length} positions; the decoder's KV cache holds "
                             f"{decoder.max_cache_len} (setup_decoder max_cache_len)")
        self.decoder = GreedyDecoder(self.language_model, max_cache_len=max(length, 256), compile=False,
                                     use_cuda_graphs=False)
        self._decoder_fixed = False
        return self.decoder

    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[int], visual: torch.Tensor, max_new_tokens: int,
                 eos_token_ids: Sequence[int], prefix_key=None, on_token=None) -> GenerationOutput:
        """Greedy decoding (GreedyDecoder: static KV cache; on CUDA after setup_decoder, compiled
        CUDA-graph steps). Stops after an id in eos_token_ids (kept in `ids`) or after
        max_new_tokens. token_probs[i] = softmax(logits)[ids[i]] at that step, in float32.

        prefix_key: a hashable naming the prompt up to and including the visual tokens (e.g. the
        keyframe set and the text before <image>). The prefix's KV is cached under it, so a later
        call with the same key prefills only the rest of the prompt; with a key the prompt is
        always run as prefix + rest, so cache hits and misses give identical results.
        timings["prefix_cache_hit"] says whether the prefix was found. on_token: see
        GreedyDecoder.generate (each token as it is made; a truthy return stops).
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        embeds = self.embed_prompt(prompt_ids, visual)
        split = [int(i) for i in prompt_ids].index(IMAGE_TOKEN_INDEX) + visual.shape[0]
        decoder = self._decoder_for(embeds.shape[0] + max(max_new_tokens, 1))
        timer = _StageTimer(self.device)
        hit = prefix_key is not None and decoder.has_prefix(prefix_key)
        if prefix_key is not None and split == embeds.shape[0]:
            raise ValueError("the prompt has no text after the visual tokens; a prefix key needs some")
        with timer("prefix_prefill_s"):
            if prefix_key is not None and not hit:
                decoder.prefill(embeds[None, :split], key=prefix_key)
        rest = embeds if prefix_key is None else embeds[split:]
        out = decoder.generate(rest[None], max(max_new_tokens, 1), list(eos_token_ids), prefix_key=prefix_key,
                               on_token=on_token)
        ids, probs = out.ids.tolist()[:max_new_tokens], out.token_probs.tolist()[:max_new_tokens]
        t = decoder.last_timings
        timings = dict(prefill_s=timer.times["prefix_prefill_s"] + t["prefill_s"], decode_s=t["decode_s"],
                       prompt_tokens=int(embeds.shape[0]), prefilled_tokens=int(t["prefilled_tokens"]) + (
                           0 if prefix_key is None or hit else split),
                       new_tokens=len(ids), prefix_cache_hit=bool(hit))
        timings["decode_s_per_token"] = timings["decode_s"] / (len(ids) - 1) if len(ids) > 1 else 0.0
        return GenerationOutput(ids, probs, out.last_prompt_logits, timings)


def pool_tokens(features: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """fusion.bilinear_pool with the same values, without its copy to channels-first: on CUDA the
    channels-last bilinear kernel spreads over every output element, where the channels-first one
    runs one thread per output pixel looping over frames x channels (tens of ms at 3584 channels)."""
    frames, count, channels = features.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"pool_tokens needs a square token grid, got {count} tokens")
    grid = features.reshape(frames, side, side, channels).permute(0, 3, 1, 2)  # channels-last strides
    pooled = -(-side // stride)
    grid = F.interpolate(grid, size=[pooled, pooled], mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(frames, pooled * pooled, channels)


class _StageTimer:
    """Wall time per named stage; synchronises CUDA so GPU work is attributed to its stage."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
