"""One decode step of :class:`~gs_reasoner_ros.model.generation.GreedyDecoder`, its attention,
its compilation and its CUDA graphs, and the token loop that runs it.

The step's inputs (token, position) live in device buffers and the step updates them itself, so on
CUDA it is captured once into a CUDA graph (optionally after ``torch.compile``) and each token
costs one graph replay. Attention reads only the written part of the cache: on CUDA a split-cache
Triton kernel (model/decode_attention.py) that reads the attended length on the device, so one
graph serves every position; elsewhere batched matmuls over the first ``L`` slots, ``L`` the
smallest multiple of ``attention_bucket`` above the current position, one graph per ``L``.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import decode_attention as split_attention
from .kv_cache import round_up
from .layer_stack import LayerStack

# on_token(index, token id, probability) -> True to stop after this token
OnToken = Callable[[int, int, float], bool]
log = logging.getLogger(__name__)


def pick_attention(choice: str, device: torch.device) -> str:
    """The decode attention that ``choice`` ("auto", "triton", "matmul" or "sdpa") means on ``device``."""
    usable = split_attention.available(device)
    if choice == "auto":
        return "triton" if usable and device.type == "cuda" else "matmul"
    if choice == "triton" and not usable:
        raise ValueError("decode_attention='triton' needs Triton and a CUDA device "
                         "(or TRITON_INTERPRET=1 on CPU, as the tests run it)")
    return choice


def pick_modes(use_cuda_graphs: bool | str, compile: bool | str, device: torch.device) -> tuple[bool, bool | str]:
    """(use_cuda_graphs, compile) with "auto" resolved for ``device``."""
    if use_cuda_graphs == "auto":
        use_cuda_graphs = device.type == "cuda"
    if compile == "auto":
        compile = device.type == "cuda"
    if use_cuda_graphs and device.type != "cuda":
        raise ValueError("use_cuda_graphs=True needs the model on a CUDA device")
    if compile == "reduce-overhead" and device.type != "cuda":
        raise ValueError("compile='reduce-overhead' needs the model on a CUDA device")
    # reduce-overhead captures graphs of its own
    return bool(use_cuda_graphs) and compile != "reduce-overhead", compile


def bucket_lengths(bucket: int | None, cache_len: int) -> tuple[int, ...]:
    """The attention lengths the decode step is run with, ascending; the last is the cache."""
    if bucket is None:
        return (cache_len,)
    step = round_up(bucket)
    return tuple(range(step, cache_len, step)) + (cache_len,)


class StepRunner:
    """Runs decode steps over ``stack``'s cache: eagerly, compiled, or as CUDA graph replays.

    ``attention`` is a choice resolved by :func:`pick_attention`; ``compile`` and
    ``use_cuda_graphs`` are resolved by :func:`pick_modes`. :meth:`warmup` compiles and captures;
    a runner that was never warmed up runs its steps eagerly.
    """

    def __init__(self, stack: LayerStack, attention: str, attention_bucket: int | None, splits: int,
                 block: int, compile: bool | str, use_cuda_graphs: bool) -> None:
        self.stack = stack
        self.decode_attention = attention
        self.decode_splits, self.decode_block = splits, block
        if attention == "triton":
            attention_bucket = None  # the kernel reads only slots 0..pos by itself
        self.attention_lengths = bucket_lengths(attention_bucket, stack.cache.length)
        self.compile = compile
        self.use_cuda_graphs = use_cuda_graphs
        dev = stack.device
        # Decode-step state: the step reads tok/pos and advances them, so a replayed graph
        # needs nothing from the host between tokens.
        with torch.no_grad():
            self.tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
            self.pos = torch.zeros(1, dtype=torch.long, device=dev)
            self.next_token = torch.zeros(1, dtype=torch.long, device=dev)
            self.next_prob = torch.zeros(1, dtype=torch.float32, device=dev)
        self._step = self.decode_step
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # attention length -> captured step
        self._host_pos = 0  # the host's copy of pos: picks the attention length of each step
        self.warm = False
        self._warned_cold = False

    def attention_length(self, pos: int) -> int:
        """Cache slots the decode step attends over when it writes position ``pos``."""
        if not 0 <= pos < self.stack.cache.length:
            raise ValueError(f"position {pos} is outside the cache (0..{self.stack.cache.length - 1})")
        return next(n for n in self.attention_lengths if n > pos)

    # ------------------------------------------------------------------ the step
    def decode_step(self, positions: Tensor) -> None:
        """One token: embed tok at pos, append its KV, write argmax/probability, advance.

        ``positions`` is ``stack.positions[:L]``: attention reads the first L cache slots (L > pos);
        its length is the one size that varies between calls (dynamic under torch.compile).
        """
        s, pos = self.stack, self.pos
        n = positions.shape[0]
        x = s.lm.model.embed_tokens(self.tok)  # (1, 1, H)
        cos, sin = s.cos.index_select(1, pos), s.sin.index_select(1, pos)
        # Additive bias hiding the slots after `pos` (stale or never written) within the L read.
        bias = torch.where(positions > pos, float("-inf"), 0.0)
        for i, layer in enumerate(s.layers):
            q, k, v = s.qkv(i, layer.input_layernorm(x), cos, sin)
            keys, values = s.cache.keys[i], s.cache.values[i]
            if self.compile:  # inductor re-inplaces index_put_; index_copy_ may copy the cache
                keys[:, :, pos] = k
                values[:, :, pos] = v
            else:  # index_copy_ never synchronises, so it is safe inside a CUDA graph capture
                keys.index_copy_(2, pos, k)
                values.index_copy_(2, pos, v)
            # The `groups` query heads sharing a kv head act as `groups` query rows against it,
            # so the cache is read once per kv head instead of once per query head.
            qg = q.reshape(1, s.num_kv_heads, s.groups, s.head_dim)
            o = self._attend(qg, keys, values, n, bias)
            o = o.reshape(1, 1, s.num_heads * s.head_dim)
            x = x + layer.self_attn.o_proj(o)
            x = s.mlp_block(i, x)
        logits = s.logits(x)
        nxt = torch.argmax(logits).view(1)
        self.next_token.copy_(nxt)
        self.next_prob.copy_(torch.exp(logits.max() - torch.logsumexp(logits, dim=-1)).view(1))
        self.tok.copy_(nxt.view(1, 1))
        self.pos.add_(1)

    def _attend(self, qg: Tensor, keys: Tensor, values: Tensor, n: int, bias: Tensor) -> Tensor:
        """Attention of the grouped query (1, kv_heads, groups, head_dim) over slots 0..pos."""
        scaling = self.stack.scaling
        if self.decode_attention == "triton":
            return split_attention.decode_attention(qg[0], keys, values, self.pos, scaling,
                                                    splits=self.decode_splits, block=self.decode_block)
        # narrow (not [:n]) so a dynamic n stays n, never min(n, cache length)
        keys, values = keys.narrow(2, 0, n), values.narrow(2, 0, n)
        if self.decode_attention == "sdpa":
            return F.scaled_dot_product_attention(qg, keys, values, attn_mask=bias.to(qg.dtype).view(1, 1, 1, -1),
                                                  scale=scaling)
        scores = torch.matmul(qg, keys.transpose(-1, -2)) * scaling
        probs = torch.softmax(scores.float() + bias, dim=-1).to(values.dtype)
        return torch.matmul(probs, values)

    def set_pos(self, pos: int) -> None:
        """Make ``pos`` the position the next step writes."""
        self.pos.fill_(pos)
        self._host_pos = pos

    def start(self, first_token: Tensor, pos: int) -> None:
        """Make ``first_token`` (already chosen) the token the next step embeds, at ``pos``."""
        self.tok.copy_(first_token.view(1, 1))
        self.set_pos(pos)

    def run_step(self) -> None:
        """One decode step at the current position: a graph replay where one was captured."""
        length = self.attention_length(self._host_pos)
        self._host_pos += 1
        graph = self.graphs.get(length)
        if graph is not None:
            graph.replay()
        elif self.warm and self.compile:
            self._step(self._positions_for(length))
        else:
            if self.stack.device.type == "cuda" and not self._warned_cold and (self.use_cuda_graphs or self.compile):
                log.warning("GreedyDecoder used before warmup(): decoding eagerly (slow)")
                self._warned_cold = True
            self.decode_step(self.stack.positions[:length])

    @torch.inference_mode()
    def step_at(self, position: int, compiled: bool = True) -> None:
        """One step writing ``position``, never a graph replay, so a profiler sees each kernel:
        the compiled step (the eager one where nothing was compiled), or with ``compiled=False``
        the eager one. For measuring; it writes the cache like any step."""
        length = self.attention_length(position)
        self.set_pos(position)
        if compiled:
            self._step(self._positions_for(length))
        else:
            self.decode_step(self.stack.positions[:length])

    # ------------------------------------------------------------------ the token loop
    def decode_tokens(self, ids: Tensor, probs: Tensor, max_new: int, eos: set[int],
                      on_token: OnToken | None = None) -> int:
        """Decode tokens 1..max_new-1 into ids/probs; returns how many tokens are valid.

        With ``on_token(i, token_id, prob)`` every token (0 included) is handed to the host as
        it is known; a truthy return stops decoding after token i (a caller's cancel)."""
        if on_token is not None:
            if self.stack.device.type == "cuda":
                return self._decode_tokens_cuda(ids, probs, max_new, eos, on_token)
            return self._decode_tokens_host(ids, probs, max_new, eos, on_token)
        if not eos:
            for i in range(1, max_new):
                self._emit(ids, probs, i)
            return max_new
        if self.stack.device.type != "cuda":
            if int(ids[0]) in eos:
                return 1
            for i in range(1, max_new):
                self._emit(ids, probs, i)
                if int(self.next_token) in eos:
                    return i + 1
            return max_new
        return self._decode_tokens_cuda(ids, probs, max_new, eos)

    def _emit(self, ids: Tensor, probs: Tensor, i: int) -> None:
        self.run_step()
        ids[i : i + 1].copy_(self.next_token)
        probs[i : i + 1].copy_(self.next_prob)

    def _decode_tokens_host(self, ids: Tensor, probs: Tensor, max_new: int, eos: set[int],
                            on_token: OnToken) -> int:
        # Off CUDA every step already ends on the host, so the token is read where it is made.
        for i in range(max_new):
            if i > 0:
                self._emit(ids, probs, i)
            token = int(ids[i])
            if on_token(i, token, float(probs[i])) or token in eos:
                return i + 1
        return max_new

    def _decode_tokens_cuda(self, ids: Tensor, probs: Tensor, max_new: int, eos: set[int],
                            on_token: OnToken | None = None) -> int:
        # Step i is queued before token i-1 is tested for eos, so the GPU never idles waiting
        # for the host; a step past the eos is wasted work, never wrong output. on_token runs in
        # the same place, on the token the loop already waited for: no extra synchronisation,
        # and its host time overlaps step i on the GPU.
        host = torch.empty(max_new, dtype=torch.long, pin_memory=True)
        host_probs = torch.empty(max_new, dtype=torch.float32, pin_memory=True) if on_token else None
        events: list[torch.cuda.Event] = []

        def stage(i: int) -> None:
            host[i : i + 1].copy_(ids[i : i + 1], non_blocking=True)
            if host_probs is not None:
                host_probs[i : i + 1].copy_(probs[i : i + 1], non_blocking=True)
            events.append(torch.cuda.Event())
            events[-1].record()

        def stops(i: int) -> bool:  # token i is on the host
            token = int(host[i])
            return bool(on_token is not None and on_token(i, token, float(host_probs[i]))) or token in eos

        stage(0)
        for i in range(1, max_new):
            self._emit(ids, probs, i)
            stage(i)
            events[i - 1].synchronize()
            if stops(i - 1):
                return i
        events[-1].synchronize()
        if on_token is not None:
            on_token(max_new - 1, int(host[-1]), float(host_probs[-1]))
        return max_new

    # ------------------------------------------------------------------ warm-up
    def warmup(self) -> None:
        """Compile and capture the decode step and run every kernel once (overwrites the cache)."""
        self.graphs.clear()
        try:
            self._compile_and_run()
        except Exception as err:
            if not self.compile or len(self.attention_lengths) == 1:
                self._compile_failed(err)
            else:  # the dynamic attention length is the new part: the whole-cache step still compiles
                log.warning("torch.compile of the bucketed decode step failed (%s: %s); attending over the "
                            "whole cache", type(err).__name__, err)
                self.attention_lengths = (self.stack.cache.length,)
                try:
                    self._compile_and_run()
                except Exception as err2:
                    self._compile_failed(err2)
        if self.use_cuda_graphs:
            self._capture()
        if self.stack.device.type == "cuda":
            torch.cuda.synchronize(self.stack.device)
        self.warm = True

    def _compile_failed(self, err: Exception) -> None:
        if not self.compile:
            raise err
        # e.g. no working compiler toolchain: graphs alone still help
        log.warning("torch.compile of the decode step failed (%s: %s); using CUDA graphs without it",
                    type(err).__name__, err)
        self.compile, self._step = False, self.decode_step
        self.use_cuda_graphs = self.stack.device.type == "cuda"
        self._compile_and_run()

    def _positions_for(self, length: int) -> Tensor:
        view = self.stack.positions[:length]
        if self.compile and len(self.attention_lengths) > 1:
            # One compiled step serves every length. The range starts at the shortest length:
            # on an H100 inductor's kernels for this step guard on length >= 129 (measured).
            torch._dynamo.mark_dynamic(view, 0, min=self.attention_lengths[0], max=self.stack.cache.length)
        return view

    def _compile_and_run(self) -> None:
        dynamic = None if len(self.attention_lengths) > 1 else False
        if self.compile is True:
            self._step = torch.compile(self.decode_step, fullgraph=True, dynamic=dynamic)
        elif self.compile == "reduce-overhead":
            for t in (*self.stack.cache.tensors(), self.tok, self.pos, self.next_token, self.next_prob):
                torch._dynamo.mark_static_address(t)
            self._step = torch.compile(self.decode_step, mode="reduce-overhead", fullgraph=True, dynamic=dynamic)
        # A short real prefill + decode steps touch every kernel once and, with compile, compile
        # (the longest and shortest attention lengths first, so a dynamic compile sees both).
        s = self.stack
        probe = torch.zeros(1, min(16, s.cache.length // 2), s.hidden_size, dtype=s.dtype, device=s.device)
        s.prefill(probe, 0)
        # Then one step per length, so a recompile or a guard that fails happens here, in warm-up.
        for length in dict.fromkeys((self.attention_lengths[-1], self.attention_lengths[0], *self.attention_lengths)):
            for _ in range(2 if length in (self.attention_lengths[0], self.attention_lengths[-1]) else 1):
                self.tok.zero_()
                self.set_pos(length - 1)
                self._step(self._positions_for(length))

    def _capture(self) -> None:
        """One CUDA graph per attention length, all in one memory pool (replays never overlap);
        the longest first, so its temporaries size the pool."""
        pool = None
        device = self.stack.device
        for length in reversed(self.attention_lengths):
            positions = self._positions_for(length)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # capture requires the side-stream warm-up
                for _ in range(2):
                    self.set_pos(length - 1)
                    self._step(positions)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            self.set_pos(length - 1)
            with torch.cuda.graph(graph, pool=pool):
                self._step(positions)
            pool = graph.pool()
            self.graphs[length] = graph
