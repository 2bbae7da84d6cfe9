"""Fast greedy decoding over a transformers ``Qwen2ForCausalLM`` fed with ``inputs_embeds``.

transformers' ``generate`` re-enters Python, rebuilds masks and grows a dynamic cache for every
token, so on an H100 a 7B decode step costs several times the time needed to read the weights
once. ``GreedyDecoder`` keeps the work per token down to the weight reads:

- a static KV cache preallocated for ``max_cache_len`` positions, written in place;
- one decode step whose inputs (token, position) live in device buffers and which updates them
  itself, so on CUDA the step is captured once into a CUDA graph (optionally after
  ``torch.compile``) and each token costs one graph replay;
- attention that reads only the written part of the cache: on CUDA a split-cache Triton kernel
  (model/decode_attention.py) that reads the attended length on the device, so one graph
  serves every position; elsewhere batched matmuls over the first ``L`` slots, ``L`` the
  smallest multiple of ``attention_bucket`` above the current position, one graph per ``L``;
- the q/k/v and the gate/up projections fused into one matrix-vector product each (the layers'
  weights become views of the fused tensors: no memory added);
- a prefix cache: the KV of a prompt prefix (system prompt + visual tokens) is kept under a key,
  so a follow-up question on the same keyframes prefills only the question.

Measured on an H100 (Qwen2-7B sizes, random bf16 weights, 10,304-slot cache, 7,122-token
prompt; see scripts/gpu/RESULTS.md): 6.14 ms per token with torch.compile + CUDA graph, split
attention and fused projections (7.25 ms with batched-matmul attention and separate
projections), 21 ms for transformers' generate, against a floor of 4.85 ms (weights read once
per token at the measured copy bandwidth). In float32 on CUDA the ids equal transformers'
generate.

The decoder calls the language model's own modules (norms, projections, MLP, ``lm_head``), so
LoRA-wrapped layers (left unfused) and any dtype work unchanged; only the attention arithmetic
and the RoPE application are written here, as the same formulas transformers uses. On CPU the
generated ids equal plain argmax decoding with transformers (tested with a tiny random Qwen2 in
float32, the split kernel in Triton's interpreter).

Compilation and graph capture happen in :meth:`GreedyDecoder.warmup`, which the node calls when
it is configured; a decoder that was never warmed up decodes eagerly instead of capturing on a
user's question. One decoder serves one request at a time (the node serialises queries).
"""
from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from typing import Hashable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import decode_attention as split_attention

log = logging.getLogger(__name__)

_CACHE_ALIGN = 64  # cache length multiple: keeps attention rows aligned for the GPU kernels


class Generation(NamedTuple):
    """Result of :meth:`GreedyDecoder.generate` (unpacks as ``ids, token_probs, last_prompt_logits``)."""

    ids: Tensor  # (n,) int64 on CPU; ends with the eos token when decoding stopped on one
    token_probs: Tensor  # (n,) float32: softmax probability of each chosen token
    last_prompt_logits: Tensor  # (vocab,) float32 logits at the last prompt position


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # Same arithmetic as transformers' apply_rotary_pos_emb, so float32 results agree bit for bit.
    return x * cos + _rotate_half(x) * sin


class _FusedLayer(NamedTuple):
    qkv_weight: Tensor
    qkv_bias: Tensor | None
    gate_up_weight: Tensor


def _fuse_linears(linears: Sequence[nn.Module]) -> tuple[Tensor, Tensor | None] | None:
    """(weight, bias) holding the rows of ``linears`` back to back, each layer's parameters
    re-pointed to its rows so nothing is stored twice; None when the layers cannot share one
    tensor (not plain nn.Linear, e.g. LoRA-wrapped; trainable; mixed dtypes or biases)."""
    if not all(type(m) is nn.Linear for m in linears):
        return None
    weights = [m.weight for m in linears]
    biases = [m.bias for m in linears]
    if any(w.requires_grad for w in weights) or any(b is not None and b.requires_grad for b in biases):
        return None  # an optimizer may hold these very tensors
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1 or len({b is None for b in biases}) != 1:
        return None
    weight = _rows_of(linears, "weight")
    bias = None if biases[0] is None else _rows_of(linears, "bias")
    return weight, bias


def _rows_of(linears: Sequence[nn.Module], name: str) -> Tensor:
    """The parameters ``name`` of ``linears`` as one tensor: a view when they already lie back to
    back in one storage (a decoder made earlier fused them), else a new tensor they become views of."""
    parts = [getattr(m, name) for m in linears]
    first = parts[0]
    rows = sum(p.shape[0] for p in parts)
    size = (rows, *first.shape[1:])
    offset, adjacent = first.storage_offset(), all(p.is_contiguous() for p in parts)
    for p in parts:
        adjacent = adjacent and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() \
            and p.storage_offset() == offset
        offset += p.numel()
    if adjacent:  # contiguous rows back to back: the first part's strides fit the whole
        return first.detach().as_strided(size, first.stride(), first.storage_offset())
    with torch.no_grad():
        fused = torch.cat([p.detach() for p in parts])
    start = 0
    for m, p in zip(linears, parts):
        setattr(m, name, nn.Parameter(fused[start : start + p.shape[0]], requires_grad=False))
        start += p.shape[0]
    return fused


class GreedyDecoder:
    """Greedy decoding engine with a static KV cache, CUDA-graph decode step and prefix cache.

    Args:
        lm: a transformers ``Qwen2ForCausalLM`` (or any model with the same ``.model.layers`` /
            ``.model.norm`` / ``.lm_head`` structure; for a peft model pass ``get_base_model()``).
        max_cache_len: positions in the static KV cache (prompt + generated tokens), rounded up
            to a multiple of 64. Costs ``layers * 2 * kv_heads * head_dim * dtype bytes`` each
            (56 KiB per position for Qwen2-7B in bf16).
        use_cuda_graphs: ``"auto"`` (on CUDA devices), True or False.
        compile: ``"auto"`` (True on CUDA devices); True to run the decode step through
            ``torch.compile`` (inductor fuses the small ops, then our CUDA graph captures it);
            False; or ``"reduce-overhead"`` to let ``torch.compile`` capture its own graphs.
            A compile that fails in warmup() falls back to plain CUDA graphs with a warning.
        max_prefixes: how many cached prefixes to keep. One lives in the static cache itself;
            each further one keeps a copy of its KV (about 0.4 GB per 32-frame prefix).
        prefill_chunk: prefill at most this many tokens per forward pass (bounds activation
            memory); None prefills in one pass.
        decode_attention: "auto" ("triton" on CUDA when Triton imports, else "matmul");
            "triton" (model/decode_attention.py: the cache cut into ``decode_splits`` pieces per
            kv head, read once for all query heads of a group, with the attended length read on
            the device, so one graph serves every position and attention buckets are not used);
            "matmul" (two batched matmuls with an fp32 softmax between, the arithmetic of
            transformers' eager attention) or "sdpa" (one fused scaled_dot_product_attention
            call with an additive mask; slower on an H100: its kernel spreads one decode step
            over only kv_heads blocks).
        decode_splits, decode_block: pieces per kv head, and cache slots per inner step, of
            "triton" attention.
        fuse_projections: "auto" (True when the q/k/v and gate/up projections are plain
            ``nn.Linear`` layers that need no gradient) or False. Fused, each of those groups is
            one matrix-vector product per token instead of two or three (the small k and v
            products ran far below memory bandwidth); the layers' weights become views of the
            fused tensors, so no memory is added and the model computes exactly as before.
            A decoder made this way assumes the model is not moved or re-cast afterwards.
        attention_bucket: the decode step attends over the first ``L`` cache slots only, ``L``
            the smallest multiple of this (rounded up to 64) that covers the current position,
            or the whole cache; each ``L`` gets its own CUDA graph. The skipped slots are masked
            anyway, so the result is the same; the saving is their reads (about 0.15 ms per
            1,000 slots per token for Qwen2-7B on an H100). None attends over the whole cache.
    """

    def __init__(
        self,
        lm,
        max_cache_len: int = 8192,
        use_cuda_graphs: bool | str = "auto",
        compile: bool | str = "auto",
        max_prefixes: int = 1,
        prefill_chunk: int | None = None,
        decode_attention: str = "auto",
        attention_bucket: int | None = 512,
        decode_splits: int = 32,
        decode_block: int = 64,
        fuse_projections: bool | str = "auto",
    ) -> None:
        for attr in ("model", "lm_head", "config"):
            if not hasattr(lm, attr):
                raise ValueError(f"lm must be a Qwen2ForCausalLM-like model; it has no '{attr}'")
        cfg = lm.config
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            raise ValueError("GreedyDecoder supports full attention only (the model uses sliding windows)")
        if max_cache_len < 2:
            raise ValueError(f"max_cache_len must be at least 2, got {max_cache_len}")
        if max_prefixes < 1:
            raise ValueError(f"max_prefixes must be >= 1, got {max_prefixes}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be positive or None, got {prefill_chunk}")
        if decode_attention not in ("auto", "triton", "matmul", "sdpa"):
            raise ValueError(f"decode_attention must be 'auto', 'triton', 'matmul' or 'sdpa', got {decode_attention!r}")
        if not isinstance(decode_splits, int) or decode_splits < 1:
            raise ValueError(f"decode_splits must be a positive int, got {decode_splits!r}")
        if decode_block not in (16, 32, 64, 128):
            raise ValueError(f"decode_block must be 16, 32, 64 or 128, got {decode_block!r}")
        if fuse_projections not in ("auto", False):
            raise ValueError(f"fuse_projections must be 'auto' or False, got {fuse_projections!r}")
        if attention_bucket is not None and (not isinstance(attention_bucket, int) or attention_bucket < 1):
            raise ValueError(f"attention_bucket must be a positive int or None, got {attention_bucket!r}")
        if compile not in (False, True, "auto", "reduce-overhead"):
            raise ValueError(f"compile must be 'auto', False, True or 'reduce-overhead', got {compile!r}")

        self.lm = lm
        self.layers = list(lm.model.layers)
        weight = lm.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.hidden_size = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim**-0.5
        self.max_cache_len = -(-max_cache_len // _CACHE_ALIGN) * _CACHE_ALIGN
        self.max_prefixes = max_prefixes
        self.prefill_chunk = prefill_chunk
        self.decode_attention = self._pick_attention(decode_attention)
        self.decode_splits, self.decode_block = decode_splits, decode_block
        if self.decode_attention == "triton":
            attention_bucket = None  # the kernel reads only slots 0..pos by itself
        self.attention_lengths = self._bucket_lengths(attention_bucket)
        self._fused = [self._fuse_layer(layer) if fuse_projections == "auto" else None for layer in self.layers]

        if use_cuda_graphs == "auto":
            use_cuda_graphs = self.device.type == "cuda"
        if compile == "auto":
            compile = self.device.type == "cuda"
        if use_cuda_graphs and self.device.type != "cuda":
            raise ValueError("use_cuda_graphs=True needs the model on a CUDA device")
        if compile == "reduce-overhead" and self.device.type != "cuda":
            raise ValueError("compile='reduce-overhead' needs the model on a CUDA device")
        self.use_cuda_graphs = bool(use_cuda_graphs) and compile != "reduce-overhead"
        self.compile = compile

        with torch.no_grad():
            self._alloc_buffers()
        self._step = self._decode_step
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}  # attention length -> captured step
        self._host_pos = 0  # the host's copy of _pos: picks the attention length of each step
        self._warm = False
        self._warned_cold = False
        self._key_counter = itertools.count()
        self._resident: Hashable | None = None  # key whose KV sits in the static cache
        self._prefixes: OrderedDict[Hashable, tuple[int, list[Tensor] | None]] = OrderedDict()
        self.warmup_s: float | None = None
        # Of the latest generate(): prefill_s (prompt + first token), decode_s (the other tokens).
        self.last_timings: dict = {}

    def _pick_attention(self, choice: str) -> str:
        usable = split_attention.available(self.device)
        if choice == "auto":
            return "triton" if usable and self.device.type == "cuda" else "matmul"
        if choice == "triton" and not usable:
            raise ValueError("decode_attention='triton' needs Triton and a CUDA device "
                             "(or TRITON_INTERPRET=1 on CPU, as the tests run it)")
        return choice

    @staticmethod
    def _fuse_layer(layer) -> _FusedLayer | None:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = _fuse_linears((attn.q_proj, attn.k_proj, attn.v_proj))
        gate_up = _fuse_linears((mlp.gate_proj, mlp.up_proj))
        if qkv is None or gate_up is None or not hasattr(mlp, "act_fn"):
            return None
        return _FusedLayer(*qkv, gate_up[0])

    # ------------------------------------------------------------------ attention lengths
    def _bucket_lengths(self, bucket: int | None) -> tuple[int, ...]:
        """The attention lengths the decode step is run with, ascending; the last is the cache."""
        if bucket is None:
            return (self.max_cache_len,)
        step = -(-bucket // _CACHE_ALIGN) * _CACHE_ALIGN
        return tuple(range(step, self.max_cache_len, step)) + (self.max_cache_len,)

    def attention_length(self, pos: int) -> int:
        """Cache slots the decode step attends over when it writes position ``pos``."""
        if not 0 <= pos < self.max_cache_len:
            raise ValueError(f"position {pos} is outside the cache (0..{self.max_cache_len - 1})")
        return next(n for n in self.attention_lengths if n > pos)

    # ------------------------------------------------------------------ buffers
    def _alloc_buffers(self) -> None:
        n, L, dev = len(self.layers), self.max_cache_len, self.device
        # Separate (not views of one) tensors per layer: torch.compile then updates each in
        # place, where a view of a shared base makes it rewrite the whole base every step.
        # One spare block of slots, never used: an attention slice of any length <= L is then
        # never the whole buffer, so a compile with the length dynamic has no contiguity case to
        # specialise on.
        shape = (1, self.num_kv_heads, L + _CACHE_ALIGN, self.head_dim)
        self._keys = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in range(n)]
        self._values = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in range(n)]
        positions = torch.arange(L, device=dev)
        probe = torch.zeros(1, dtype=self.dtype, device=dev)
        cos, sin = self.lm.model.rotary_emb(probe, positions[None])
        self._cos, self._sin = cos, sin  # (1, L, head_dim), same values transformers computes
        self._positions = positions
        # Decode-step state: the step reads _tok/_pos and advances them, so a replayed graph
        # needs nothing from the host between tokens.
        self._tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self._pos = torch.zeros(1, dtype=torch.long, device=dev)
        self._next = torch.zeros(1, dtype=torch.long, device=dev)
        self._prob = torch.zeros(1, dtype=torch.float32, device=dev)

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes held by the static KV cache."""
        return sum(t.numel() * t.element_size() for t in self._keys + self._values)

    # ------------------------------------------------------------------ model pieces
    def _attention_qkv(self, i: int, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        T = h.shape[1]
        fused = self._fused[i]
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

    def _mlp_block(self, i: int, x: Tensor) -> Tensor:
        layer, fused = self.layers[i], self._fused[i]
        h = layer.post_attention_layernorm(x)
        if fused is None:
            return x + layer.mlp(h)
        gate, up = F.linear(h, fused.gate_up_weight).chunk(2, dim=-1)
        return x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)

    def _logits(self, x_last: Tensor) -> Tensor:
        return self.lm.lm_head(self.lm.model.norm(x_last))[0, -1].float()

    # ------------------------------------------------------------------ prefill
    def _forward_chunk(self, embeds: Tensor, start: int) -> Tensor:
        """Run ``embeds`` at positions ``start..`` through the LM, filling the cache; returns the
        last position's hidden state (1, 1, H)."""
        T = embeds.shape[1]
        end = start + T
        cos, sin = self._cos[:, start:end], self._sin[:, start:end]
        # Causal attention over the cached positions before `start` plus this chunk.
        mask = None
        if start > 0:
            mask = self._positions[:end][None, :] <= self._positions[start:end][:, None]
        x = embeds
        for i, layer in enumerate(self.layers):
            q, k, v = self._attention_qkv(i, layer.input_layernorm(x), cos, sin)
            self._keys[i][:, :, start:end] = k
            self._values[i][:, :, start:end] = v
            if mask is None:  # causal from position 0: flash kernels take the kv heads as they are
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling,
                                                   enable_gqa=self.groups > 1)
            else:  # masked kernels need one kv head per query head
                keys = self._expand_kv(self._keys[i][:, :, :end])
                values = self._expand_kv(self._values[i][:, :, :end])
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
            o = o.transpose(1, 2).reshape(1, T, self.num_heads * self.head_dim)
            x = x + layer.self_attn.o_proj(o)
            x = self._mlp_block(i, x)
        return x[:, -1:]

    def _expand_kv(self, t: Tensor) -> Tensor:
        # (1, kv_heads, S, D) -> (1, heads, S, D), head h reading kv head h // groups as transformers does.
        if self.groups == 1:
            return t
        _, hk, s, d = t.shape
        return t[:, :, None].expand(1, hk, self.groups, s, d).reshape(1, hk * self.groups, s, d)

    def _prefill(self, embeds: Tensor, start: int) -> Tensor:
        chunk = self.prefill_chunk or embeds.shape[1]
        for offset in range(0, embeds.shape[1], chunk):
            last = self._forward_chunk(embeds[:, offset : offset + chunk], start + offset)
        return last

    # ------------------------------------------------------------------ decode step
    def _decode_step(self, positions: Tensor) -> None:
        """One token: embed _tok at _pos, append its KV, write argmax/probability, advance.

        ``positions`` is ``_positions[:L]``: attention reads the first L cache slots (L > _pos);
        its length is the one size that varies between calls (dynamic under torch.compile).
        """
        pos = self._pos
        n = positions.shape[0]
        x = self.lm.model.embed_tokens(self._tok)  # (1, 1, H)
        cos, sin = self._cos.index_select(1, pos), self._sin.index_select(1, pos)
        # Additive bias hiding the slots after `pos` (stale or never written) within the L read.
        bias = torch.where(positions > pos, float("-inf"), 0.0)
        for i, layer in enumerate(self.layers):
            q, k, v = self._attention_qkv(i, layer.input_layernorm(x), cos, sin)
            keys, values = self._keys[i], self._values[i]
            if self.compile:  # inductor re-inplaces index_put_; index_copy_ may copy the cache
                keys[:, :, pos] = k
                values[:, :, pos] = v
            else:  # index_copy_ never synchronises, so it is safe inside a CUDA graph capture
                keys.index_copy_(2, pos, k)
                values.index_copy_(2, pos, v)
            # The `groups` query heads sharing a kv head act as `groups` query rows against it,
            # so the cache is read once per kv head instead of once per query head.
            qg = q.reshape(1, self.num_kv_heads, self.groups, self.head_dim)
            o = self._attend(qg, keys, values, n, bias)
            o = o.reshape(1, 1, self.num_heads * self.head_dim)
            x = x + layer.self_attn.o_proj(o)
            x = self._mlp_block(i, x)
        logits = self._logits(x)
        nxt = torch.argmax(logits).view(1)
        self._next.copy_(nxt)
        self._prob.copy_(torch.exp(logits.max() - torch.logsumexp(logits, dim=-1)).view(1))
        self._tok.copy_(nxt.view(1, 1))
        self._pos.add_(1)

    def _attend(self, qg: Tensor, keys: Tensor, values: Tensor, n: int, bias: Tensor) -> Tensor:
        """Attention of the grouped query (1, kv_heads, groups, head_dim) over slots 0.._pos."""
        if self.decode_attention == "triton":
            return split_attention.decode_attention(qg[0], keys, values, self._pos, self.scaling,
                                                    splits=self.decode_splits, block=self.decode_block)
        # narrow (not [:n]) so a dynamic n stays n, never min(n, cache length)
        keys, values = keys.narrow(2, 0, n), values.narrow(2, 0, n)
        if self.decode_attention == "sdpa":
            return F.scaled_dot_product_attention(qg, keys, values, attn_mask=bias.to(qg.dtype).view(1, 1, 1, -1),
                                                  scale=self.scaling)
        scores = torch.matmul(qg, keys.transpose(-1, -2)) * self.scaling
        probs = torch.softmax(scores.float() + bias, dim=-1).to(values.dtype)
        return torch.matmul(probs, values)

    # ------------------------------------------------------------------ warm-up
    @torch.inference_mode()
    def warmup(self) -> float:
        """Compile and capture the decode step and run every kernel once; returns seconds taken.

        Call when the node is configured, before any question. Clears the prefix cache.
        """
        t0 = time.perf_counter()
        self._drop_prefixes()
        self._graphs.clear()
        try:
            self._compile_and_run()
        except Exception as err:
            if not self.compile or len(self.attention_lengths) == 1:
                self._compile_failed(err)
            else:  # the dynamic attention length is the new part: the whole-cache step still compiles
                log.warning("torch.compile of the bucketed decode step failed (%s: %s); attending over the "
                            "whole cache", type(err).__name__, err)
                self.attention_lengths = (self.max_cache_len,)
                try:
                    self._compile_and_run()
                except Exception as err2:
                    self._compile_failed(err2)
        if self.use_cuda_graphs:
            self._capture()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._warm = True
        self.warmup_s = time.perf_counter() - t0
        return self.warmup_s

    def _compile_failed(self, err: Exception) -> None:
        if not self.compile:
            raise err
        # e.g. no working compiler toolchain: graphs alone still help
        log.warning("torch.compile of the decode step failed (%s: %s); using CUDA graphs without it",
                    type(err).__name__, err)
        self.compile, self._step = False, self._decode_step
        self.use_cuda_graphs = self.device.type == "cuda"
        self._compile_and_run()

    def _positions_for(self, length: int) -> Tensor:
        view = self._positions[:length]
        if self.compile and len(self.attention_lengths) > 1:
            # One compiled step serves every length. The range starts at the shortest length:
            # on an H100 inductor's kernels for this step guard on length >= 129 (measured).
            torch._dynamo.mark_dynamic(view, 0, min=self.attention_lengths[0], max=self.max_cache_len)
        return view

    def _set_pos(self, pos: int) -> None:
        self._pos.fill_(pos)
        self._host_pos = pos

    def _compile_and_run(self) -> None:
        dynamic = None if len(self.attention_lengths) > 1 else False
        if self.compile is True:
            self._step = torch.compile(self._decode_step, fullgraph=True, dynamic=dynamic)
        elif self.compile == "reduce-overhead":
            for t in (*self._keys, *self._values, self._tok, self._pos, self._next, self._prob):
                torch._dynamo.mark_static_address(t)
            self._step = torch.compile(self._decode_step, mode="reduce-overhead", fullgraph=True, dynamic=dynamic)
        # A short real prefill + decode steps touch every kernel once and, with compile, compile
        # (the longest and shortest attention lengths first, so a dynamic compile sees both).
        probe = torch.zeros(1, min(16, self.max_cache_len // 2), self.hidden_size, dtype=self.dtype, device=self.device)
        self._prefill(probe, 0)
        # Then one step per length, so a recompile or a guard that fails happens here, in warm-up.
        for length in dict.fromkeys((self.attention_lengths[-1], self.attention_lengths[0], *self.attention_lengths)):
            for _ in range(2 if length in (self.attention_lengths[0], self.attention_lengths[-1]) else 1):
                self._tok.zero_()
                self._set_pos(length - 1)
                self._step(self._positions_for(length))

    def _capture(self) -> None:
        """One CUDA graph per attention length, all in one memory pool (replays never overlap);
        the longest first, so its temporaries size the pool."""
        pool = None
        for length in reversed(self.attention_lengths):
            positions = self._positions_for(length)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # capture requires the side-stream warm-up
                for _ in range(2):
                    self._set_pos(length - 1)
                    self._step(positions)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            self._set_pos(length - 1)
            with torch.cuda.graph(graph, pool=pool):
                self._step(positions)
            pool = graph.pool()
            self._graphs[length] = graph

    def _run_step(self) -> None:
        length = self.attention_length(self._host_pos)
        self._host_pos += 1
        graph = self._graphs.get(length)
        if graph is not None:
            graph.replay()
        elif self._warm and self.compile:
            self._step(self._positions_for(length))
        else:
            if self.device.type == "cuda" and not self._warned_cold and (self.use_cuda_graphs or self.compile):
                log.warning("GreedyDecoder used before warmup(): decoding eagerly (slow)")
                self._warned_cold = True
            self._decode_step(self._positions[:length])

    # ------------------------------------------------------------------ prefix cache
    def _drop_prefixes(self) -> None:
        self._prefixes.clear()
        self._resident = None

    def _release_resident(self) -> None:
        """The static cache is about to be overwritten from position 0: keep a copy of the
        resident prefix when more than one prefix may be kept, else forget it."""
        key = self._resident
        self._resident = None
        if key is None or key not in self._prefixes:
            return
        length, snapshot = self._prefixes[key]
        if snapshot is not None:
            return
        if self.max_prefixes > 1:
            self._prefixes[key] = (length, [t[:, :, :length].clone() for t in self._keys + self._values])
        else:
            del self._prefixes[key]

    def _activate(self, key: Hashable) -> int:
        if key not in self._prefixes:
            raise ValueError(f"no cached prefix under key {key!r} (never prefilled, or evicted): prefill it again")
        length, snapshot = self._prefixes[key]
        if key != self._resident:
            self._release_resident()
            for t, saved in zip(self._keys + self._values, snapshot):
                t[:, :, :length].copy_(saved)
            self._resident = key
        self._prefixes.move_to_end(key)
        return length

    @torch.inference_mode()
    def prefill(self, prefix_embeds: Tensor, key: Hashable | None = None) -> Hashable:
        """Cache the KV of a prompt prefix (e.g. system prompt + visual tokens) under ``key``.

        ``prefix_embeds`` is (1, T, hidden). Returns the key (a fresh one when ``key`` is None),
        to pass as ``generate(..., prefix_key=key)`` for each question on that prefix.
        """
        embeds = self._check_embeds(prefix_embeds, "prefix_embeds")
        T = embeds.shape[1]
        if T >= self.max_cache_len:
            raise ValueError(f"prefix of {T} tokens does not fit max_cache_len={self.max_cache_len}")
        if key is None:
            key = ("prefix", next(self._key_counter))
        self._release_resident()
        self._prefixes.pop(key, None)
        self._prefill(embeds, 0)
        self._prefixes[key] = (T, None)
        self._resident = key
        while len(self._prefixes) > self.max_prefixes:
            self._prefixes.popitem(last=False)
        return key

    def has_prefix(self, key: Hashable) -> bool:
        """Whether a prefix is cached under ``key``."""
        return key in self._prefixes

    # ------------------------------------------------------------------ generation
    def _check_embeds(self, embeds: Tensor, name: str) -> Tensor:
        if not isinstance(embeds, Tensor) or embeds.ndim != 3 or embeds.shape[0] != 1:
            shape = tuple(embeds.shape) if isinstance(embeds, Tensor) else type(embeds).__name__
            raise ValueError(f"{name} must be a (1, T, hidden) tensor, got {shape}")
        if embeds.shape[1] == 0:
            raise ValueError(f"{name} is empty: at least one token is needed")
        if embeds.shape[2] != self.hidden_size:
            raise ValueError(f"{name} has width {embeds.shape[2]}, the model's hidden size is {self.hidden_size}")
        return embeds.to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def generate(
        self,
        embeds: Tensor,
        max_new_tokens: int,
        eos_token_ids: Sequence[int] | int | None = None,
        prefix_key: Hashable | None = None,
    ) -> Generation:
        """Greedy-decode up to ``max_new_tokens`` after ``embeds``.

        ``embeds`` (1, T, hidden) is the whole prompt, or with ``prefix_key`` the part after a
        prefix cached by :meth:`prefill` (the question). Decoding stops after the first token in
        ``eos_token_ids`` (kept in the output); with no eos ids it produces exactly
        ``max_new_tokens`` tokens.
        """
        embeds = self._check_embeds(embeds, "embeds")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        eos = {eos_token_ids} if isinstance(eos_token_ids, int) else set(eos_token_ids or ())
        start = 0 if prefix_key is None else self._activate(prefix_key)
        T = embeds.shape[1]
        if start + T + max_new_tokens - 1 > self.max_cache_len:
            raise ValueError(
                f"prompt of {start + T} tokens + {max_new_tokens} new tokens exceeds max_cache_len={self.max_cache_len}"
            )
        if start == 0:
            self._release_resident()

        t0 = time.perf_counter()
        logits = self._logits(self._prefill(embeds, start))
        first = torch.argmax(logits)
        ids = torch.empty(max_new_tokens, dtype=torch.long, device=self.device)
        probs = torch.empty(max_new_tokens, dtype=torch.float32, device=self.device)
        ids[0] = first
        probs[0] = torch.exp(logits.max() - torch.logsumexp(logits, dim=-1))
        self._tok.copy_(first.view(1, 1))
        self._set_pos(start + T)
        self._sync()  # one sync per request, so prefill and decode times are separable
        t1 = time.perf_counter()
        n = self._decode_loop(ids, probs, max_new_tokens, eos)
        result = Generation(ids[:n].cpu(), probs[:n].cpu(), logits.cpu())
        t2 = time.perf_counter()
        self.last_timings = dict(prompt_tokens=start + T, prefilled_tokens=T, new_tokens=n,
                                 prefill_s=t1 - t0, decode_s=t2 - t1)
        return result

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _decode_loop(self, ids: Tensor, probs: Tensor, max_new: int, eos: set[int]) -> int:
        """Decode tokens 1..max_new-1 into ids/probs; returns how many tokens are valid."""
        if not eos:
            for i in range(1, max_new):
                self._run_step()
                ids[i : i + 1].copy_(self._next)
                probs[i : i + 1].copy_(self._prob)
            return max_new
        if self.device.type != "cuda":
            if int(ids[0]) in eos:
                return 1
            for i in range(1, max_new):
                self._run_step()
                ids[i : i + 1].copy_(self._next)
                probs[i : i + 1].copy_(self._prob)
                if int(self._next) in eos:
                    return i + 1
            return max_new
        return self._decode_loop_cuda(ids, probs, max_new, eos)

    def _decode_loop_cuda(self, ids: Tensor, probs: Tensor, max_new: int, eos: set[int]) -> int:
        # Step i is queued before token i-1 is tested for eos, so the GPU never idles waiting
        # for the host; a step past the eos is wasted work, never wrong output.
        host = torch.empty(max_new, dtype=torch.long, pin_memory=True)
        events: list[torch.cuda.Event] = []

        def stage(i: int) -> None:
            host[i : i + 1].copy_(ids[i : i + 1], non_blocking=True)
            events.append(torch.cuda.Event())
            events[-1].record()

        stage(0)
        for i in range(1, max_new):
            self._run_step()
            ids[i : i + 1].copy_(self._next)
            probs[i : i + 1].copy_(self._prob)
            stage(i)
            events[i - 1].synchronize()
            if int(host[i - 1]) in eos:
                return i
        events[-1].synchronize()
        return max_new
