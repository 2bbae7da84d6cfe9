"""Cached prompt prefixes of :class:`~gs_reasoner_ros.model.generation.GreedyDecoder`.

The KV of a prompt prefix (system prompt + visual tokens) is kept under a key, so a follow-up
question on the same keyframes prefills only the question. One prefix, the resident one, lives in
the static cache itself; each further one keeps a copy of its KV (about 0.4 GB per 32-frame
prefix for Qwen2-7B in bf16), restored into the cache when asked for.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Hashable

from torch import Tensor

from .kv_cache import StaticKVCache


class PrefixCache:
    """Up to ``max_prefixes`` prefixes of ``cache``, the least recently used evicted first."""

    def __init__(self, cache: StaticKVCache, max_prefixes: int) -> None:
        self.cache = cache
        self.max_prefixes = max_prefixes
        # key -> (length, a copy of its KV, or None while it is resident in the cache)
        self._entries: OrderedDict[Hashable, tuple[int, list[Tensor] | None]] = OrderedDict()
        self._resident: Hashable | None = None  # key whose KV sits in the static cache
        self._key_counter = itertools.count()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def new_key(self) -> Hashable:
        return ("prefix", next(self._key_counter))

    def clear(self) -> None:
        self._entries.clear()
        self._resident = None

    def release_resident(self) -> None:
        """The static cache is about to be overwritten from position 0: keep a copy of the
        resident prefix when more than one prefix may be kept, else forget it."""
        key = self._resident
        self._resident = None
        if key is None or key not in self._entries:
            return
        length, snapshot = self._entries[key]
        if snapshot is not None:
            return
        if self.max_prefixes > 1:
            self._entries[key] = (length, self.cache.snapshot(length))
        else:
            del self._entries[key]

    def discard(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def add(self, key: Hashable, length: int) -> None:
        """Record that slots 0..length-1 of the cache now hold the prefix ``key``."""
        self._entries[key] = (length, None)
        self._resident = key
        while len(self._entries) > self.max_prefixes:
            self._entries.popitem(last=False)

    def activate(self, key: Hashable) -> int:
        """Put the prefix ``key`` in the cache (restoring its copy if it is not resident); returns
        its length."""
        if key not in self._entries:
            raise ValueError(f"no cached prefix under key {key!r} (never prefilled, or evicted): prefill it again")
        length, snapshot = self._entries[key]
        if key != self._resident:
            self.release_resident()
            self.cache.restore(snapshot, length)
            self._resident = key
        self._entries.move_to_end(key)
        return length
