"""Fast greedy decoding over a transformers ``Qwen2ForCausalLM`` fed with ``inputs_embeds``.

transformers' ``generate`` re-enters Python, rebuilds masks and grows a dynamic cache for every
token, so on an H100 a 7B decode step costs several times the time needed to read the weights
once. ``GreedyDecoder`` keeps the work per token down to the weight reads:

- weight_fusion.py: the q/k/v and the gate/up projections fused into one matrix-vector product
  each (the layers' weights become views of the fused tensors: no memory added);
- kv_cache.py: a static KV cache preallocated for ``max_cache_len`` positions, written in place;
- layer_stack.py: the model's layers run against that cache (prefill, and the pieces the decode
  step shares with it);
- step_runner.py: one decode step whose inputs (token, position) live in device buffers and which
  updates them itself, so on CUDA the step is captured once into a CUDA graph (optionally after
  ``torch.compile``) and each token costs one graph replay; its attention reads only the written
  part of the cache (the split-cache Triton kernel of decode_attention.py on CUDA);
- prefix_cache.py: the KV of a prompt prefix (system prompt + visual tokens) is kept under a key,
  so a follow-up question on the same keyframes prefills only the question.

``GreedyDecoder`` below composes them.

Measured on an H100 (Qwen2-7B sizes, random bf16 weights, 10,304-slot cache, 7,122-token
prompt; see scripts/gpu/RESULTS.md): 6.14 ms per token with torch.compile + CUDA graph, split
attention and fused projections (7.25 ms with batched-matmul attention and separate
projections), 21 ms for transformers' generate, against a floor of 4.85 ms (weights read once
per token at the measured copy bandwidth). In float32 on CUDA the ids equal transformers'
generate.

The decoder calls the language model's own modules (norms, projections, MLP, ``lm_head``), so
LoRA-wrapped layers (left unfused) and any dtype work unchanged. On CPU the generated ids equal
plain argmax decoding with transformers (tested with a tiny random Qwen2 in float32, the split
kernel in Triton's interpreter).

Compilation and graph capture happen in :meth:`GreedyDecoder.warmup`, which the node calls when
it is configured; a decoder that was never warmed up decodes eagerly instead of capturing on a
user's question. One decoder serves one request at a time (the node serialises queries).
"""
from __future__ import annotations

import time
from typing import Hashable, NamedTuple, Sequence

import torch
from torch import Tensor

from .layer_stack import LayerStack
from .prefix_cache import PrefixCache
from .step_runner import OnToken, StepRunner, pick_attention, pick_modes
from .weight_fusion import FusedLayer, fuse_layer


class Generation(NamedTuple):
    """Result of :meth:`GreedyDecoder.generate` (unpacks as ``ids, token_probs, last_prompt_logits``)."""

    ids: Tensor  # (n,) int64 on CPU; ends with the eos token when decoding stopped on one
    token_probs: Tensor  # (n,) float32: softmax probability of each chosen token
    last_prompt_logits: Tensor  # (vocab,) float32 logits at the last prompt position


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
        _check_options(lm, max_cache_len, max_prefixes, prefill_chunk, decode_attention, decode_splits,
                       decode_block, fuse_projections, attention_bucket, compile)
        self.lm = lm
        weight = lm.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.hidden_size = lm.config.hidden_size
        self.max_prefixes = max_prefixes
        self.prefill_chunk = prefill_chunk
        attention = pick_attention(decode_attention, self.device)
        fused = [fuse_layer(layer) if fuse_projections == "auto" else None for layer in lm.model.layers]
        use_cuda_graphs, compile = pick_modes(use_cuda_graphs, compile, self.device)
        self.stack = LayerStack(lm, fused, max_cache_len, prefill_chunk)
        self.runner = StepRunner(self.stack, attention, attention_bucket, decode_splits, decode_block,
                                 compile, use_cuda_graphs)
        self.prefixes = PrefixCache(self.stack.cache, max_prefixes)
        self.warmup_s: float | None = None
        # Of the latest generate(): prefill_s (prompt + first token), decode_s (the other tokens).
        self.last_timings: dict = {}

    # ------------------------------------------------------------------ what the parts decided
    @property
    def max_cache_len(self) -> int:
        return self.stack.cache.length

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes held by the static KV cache."""
        return self.stack.cache.nbytes

    @property
    def fused(self) -> list[FusedLayer | None]:
        """Per layer, its fused projections, or None where the layer runs its own modules."""
        return self.stack.fused

    @property
    def decode_attention(self) -> str:
        return self.runner.decode_attention

    @property
    def attention_lengths(self) -> tuple[int, ...]:
        """The attention lengths the decode step is run with, ascending; the last is the cache."""
        return self.runner.attention_lengths

    def attention_length(self, pos: int) -> int:
        """Cache slots the decode step attends over when it writes position ``pos``."""
        return self.runner.attention_length(pos)

    @property
    def compile(self) -> bool | str:
        """The compile mode in use (False after a compile that failed in warmup())."""
        return self.runner.compile

    @property
    def use_cuda_graphs(self) -> bool:
        return self.runner.use_cuda_graphs

    # ------------------------------------------------------------------ warm-up and reset
    @torch.inference_mode()
    def warmup(self) -> float:
        """Compile and capture the decode step and run every kernel once; returns seconds taken.

        Call when the node is configured, before any question. Clears the prefix cache.
        """
        t0 = time.perf_counter()
        self.drop_prefixes()
        self.runner.warmup()
        self.warmup_s = time.perf_counter() - t0
        return self.warmup_s

    def drop_prefixes(self) -> None:
        """Forget every cached prefix (the next question on one prefills it again)."""
        self.prefixes.clear()

    def reset(self) -> None:
        """Forget every cached prefix and zero the KV cache. After a failed request: NaN left in
        the cache past a later prompt's end still reaches the attention output through the
        masked positions (0 * NaN)."""
        self.drop_prefixes()
        self.stack.cache.zero_()

    # ------------------------------------------------------------------ prefix cache
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
            key = self.prefixes.new_key()
        self.prefixes.release_resident()
        self.prefixes.discard(key)
        self.stack.prefill(embeds, 0)
        self.prefixes.add(key, T)
        return key

    def has_prefix(self, key: Hashable) -> bool:
        """Whether a prefix is cached under ``key``."""
        return key in self.prefixes

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
        on_token: OnToken | None = None,
    ) -> Generation:
        """Greedy-decode up to ``max_new_tokens`` after ``embeds``.

        ``embeds`` (1, T, hidden) is the whole prompt, or with ``prefix_key`` the part after a
        prefix cached by :meth:`prefill` (the question). Decoding stops after the first token in
        ``eos_token_ids`` (kept in the output); with no eos ids it produces exactly
        ``max_new_tokens`` tokens.

        ``on_token(i, token_id, prob)`` streams the tokens: it is called on the decoding thread
        with each token as soon as the host has it (on CUDA where the token loop already waits
        for it, so streaming adds no synchronisation), and a truthy return stops decoding after
        that token, leaving the KV cache and the cached prefixes as an eos would.
        """
        embeds = self._check_embeds(embeds, "embeds")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        eos = {eos_token_ids} if isinstance(eos_token_ids, int) else set(eos_token_ids or ())
        start = 0 if prefix_key is None else self.prefixes.activate(prefix_key)
        T = embeds.shape[1]
        if start + T + max_new_tokens - 1 > self.max_cache_len:
            raise ValueError(
                f"prompt of {start + T} tokens + {max_new_tokens} new tokens exceeds max_cache_len={self.max_cache_len}"
            )
        if start == 0:
            self.prefixes.release_resident()

        t0 = time.perf_counter()
        logits = self.stack.logits(self.stack.prefill(embeds, start))
        first = torch.argmax(logits)
        ids = torch.empty(max_new_tokens, dtype=torch.long, device=self.device)
        probs = torch.empty(max_new_tokens, dtype=torch.float32, device=self.device)
        ids[0] = first
        probs[0] = torch.exp(logits.max() - torch.logsumexp(logits, dim=-1))
        self.runner.start(first, start + T)
        if self.device.type == "cuda":  # one sync per request, so prefill and decode times are separable
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        n = self.runner.decode_tokens(ids, probs, max_new_tokens, eos, on_token)
        result = Generation(ids[:n].cpu(), probs[:n].cpu(), logits.cpu())
        t2 = time.perf_counter()
        self.last_timings = dict(prompt_tokens=start + T, prefilled_tokens=T, new_tokens=n,
                                 prefill_s=t1 - t0, decode_s=t2 - t1)
        return result


def _check_options(lm, max_cache_len, max_prefixes, prefill_chunk, decode_attention, decode_splits,
                   decode_block, fuse_projections, attention_bucket, compile) -> None:
    """ValueError for a model the decoder cannot run or an option out of range."""
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
