"""The language model's decoder layers run against the static KV cache (prefill and shared pieces).

The stack calls the model's own modules (norms, projections, MLP, ``lm_head``), so LoRA-wrapped
layers (left unfused) and any dtype work unchanged; only the attention arithmetic and the RoPE
application are written here, as the same formulas transformers uses. The decode step
(model/step_runner.py) reuses :meth:`LayerStack.qkv`, :meth:`LayerStack.mlp_block` and
:meth:`LayerStack.logits`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kv_cache import StaticKVCache
from .weight_fusion import FusedLayer


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # Same arithmetic as transformers' apply_rotary_pos_emb, so float32 results agree bit for bit.
    return x * cos + _rotate_half(x) * sin


class LayerStack:
    """A ``Qwen2ForCausalLM``-like model's layers over a :class:`StaticKVCache` of ``cache_len``
    positions, with the RoPE tables of every position precomputed.

    ``fused`` holds one :class:`FusedLayer` (or None: the layer's own modules) per layer;
    ``prefill_chunk`` bounds the tokens per prefill forward pass (None: one pass).
    """

    def __init__(self, lm, fused: list[FusedLayer | None], cache_len: int, prefill_chunk: int | None) -> None:
        cfg = lm.config
        self.lm = lm
        self.layers = list(lm.model.layers)
        self.fused = fused
        self.prefill_chunk = prefill_chunk
        weight = lm.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.hidden_size = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim**-0.5
        self.cache = StaticKVCache(len(self.layers), self.num_kv_heads, self.head_dim, cache_len,
                                   self.dtype, self.device)
        with torch.no_grad():
            positions = torch.arange(self.cache.length, device=self.device)
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = lm.model.rotary_emb(probe, positions[None])
        self.cos, self.sin = cos, sin  # (1, L, head_dim), same values transformers computes
        self.positions = positions

    # ------------------------------------------------------------------ model pieces
    def qkv(self, i: int, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer ``i``'s query, key and value heads of ``h`` (1, T, hidden), RoPE applied."""
        T = h.shape[1]
        fused = self.fused[i]
        if fused is None:
            attn = self.layers[i].self_attn
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        else:
            q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = F.linear(h, fused.qkv_weight, fused.qkv_bias).split((q_width, kv_width, kv_width), dim=-1)
        q = q.reshape(1, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(1, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(1, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def mlp_block(self, i: int, x: Tensor) -> Tensor:
        """``x`` plus layer ``i``'s MLP of its normed ``x``."""
        layer, fused = self.layers[i], self.fused[i]
        h = layer.post_attention_layernorm(x)
        if fused is None:
            return x + layer.mlp(h)
        gate, up = F.linear(h, fused.gate_up_weight).chunk(2, dim=-1)
        return x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)

    def logits(self, x_last: Tensor) -> Tensor:
        """float32 (vocab,) logits of the last position of ``x_last``."""
        return self.lm.lm_head(self.lm.model.norm(x_last))[0, -1].float()

    # ------------------------------------------------------------------ prefill
    def prefill(self, embeds: Tensor, start: int) -> Tensor:
        """Run ``embeds`` (1, T, hidden) at positions ``start..`` through the LM, in chunks of
        ``prefill_chunk``, filling the cache; returns the last position's hidden state (1, 1, H)."""
        chunk = self.prefill_chunk or embeds.shape[1]
        for offset in range(0, embeds.shape[1], chunk):
            last = self._forward_chunk(embeds[:, offset : offset + chunk], start + offset)
        return last

    def _forward_chunk(self, embeds: Tensor, start: int) -> Tensor:
        T = embeds.shape[1]
        end = start + T
        cos, sin = self.cos[:, start:end], self.sin[:, start:end]
        # Causal attention over the cached positions before `start` plus this chunk.
        mask = None
        if start > 0:
            mask = self.positions[:end][None, :] <= self.positions[start:end][:, None]
        keys, values = self.cache.keys, self.cache.values
        x = embeds
        for i, layer in enumerate(self.layers):
            q, k, v = self.qkv(i, layer.input_layernorm(x), cos, sin)
            keys[i][:, :, start:end] = k
            values[i][:, :, start:end] = v
            if mask is None:  # causal from position 0: flash kernels take the kv heads as they are
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling,
                                                   enable_gqa=self.groups > 1)
            else:  # masked kernels need one kv head per query head
                o = F.scaled_dot_product_attention(q, self._expand_kv(keys[i][:, :, :end]),
                                                   self._expand_kv(values[i][:, :, :end]),
                                                   attn_mask=mask, scale=self.scaling)
            o = o.transpose(1, 2).reshape(1, T, self.num_heads * self.head_dim)
            x = x + layer.self_attn.o_proj(o)
            x = self.mlp_block(i, x)
        return x[:, -1:]

    def _expand_kv(self, t: Tensor) -> Tensor:
        # (1, kv_heads, S, D) -> (1, heads, S, D), head h reading kv head h // groups as transformers does.
        if self.groups == 1:
            return t
        _, hk, s, d = t.shape
        return t[:, :, None].expand(1, hk, self.groups, s, d).reshape(1, hk * self.groups, s, d)
