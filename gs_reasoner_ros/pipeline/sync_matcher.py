"""The approximate-time matcher behind the node's synchronizer, with the API shape of ROS 2
message_filters (`ApproximateTimeSynchronizer(inputs, queue_size, slop)`, `registerCallback`).
ROS-free: anything with a `header.stamp` can be fed, and any filter that calls
`registerCallback` callbacks can be an input (gs_reasoner_ros.ros.sync has the subscriber).

Matching rule (this module's own): keep a time-sorted queue per input; the pivot is the
newest of the queues' oldest stamps (no set can be older than that). Messages older than
pivot - slop can never be matched and are dropped; a set is emitted when every queue holds
a message within `slop` of the pivot (the one nearest to it), and everything up to the
emitted messages is removed. Per-topic stamps are assumed to increase, as cameras do.
"""
from __future__ import annotations

import bisect
import threading
from typing import Callable


def header_stamp(msg) -> float:
    s = msg.header.stamp
    return float(s.sec) + float(s.nanosec) * 1e-9


class SimpleFilter:
    """Something that calls registered callbacks with messages."""

    def __init__(self):
        self._callbacks: dict[int, tuple[Callable, tuple]] = {}

    def registerCallback(self, cb: Callable, *args) -> int:  # noqa: N802 (message_filters' name)
        key = len(self._callbacks)
        self._callbacks[key] = (cb, args)
        return key

    def signalMessage(self, *msg) -> None:  # noqa: N802
        for cb, args in list(self._callbacks.values()):
            cb(*(msg + args))


class ApproximateTimeSynchronizer(SimpleFilter):
    """Groups one message per input whose header stamps lie within `slop` seconds."""

    def __init__(self, fs, queue_size: int, slop: float, allow_headerless: bool = False,
                 stamp: Callable = header_stamp):
        super().__init__()
        if queue_size < 1 or slop < 0:
            raise ValueError(f"need queue_size >= 1 and slop >= 0, got {queue_size}, {slop}")
        self.queue_size, self.slop, self._stamp = int(queue_size), float(slop), stamp
        self._queues: list[list[tuple[float, int, object]]] = [[] for _ in fs]
        self._lock = threading.Lock()
        self._seq = 0
        self.dropped = 0  # messages that never became part of a set
        self.matched = 0
        for i, f in enumerate(fs):
            f.registerCallback(self.add, i)

    def drop_after(self, stamp: float) -> None:
        """Forget waiting messages stamped after `stamp` (the clock went back: they belong to
        the old timeline and must never pair with the new one's)."""
        with self._lock:
            for q in self._queues:
                q[:] = [e for e in q if e[0] <= stamp]

    def add(self, msg, index: int) -> None:
        """Feed message `msg` of input `index` (the inputs call this themselves)."""
        ready = []
        with self._lock:
            q = self._queues[index]
            self._seq += 1
            bisect.insort(q, (self._stamp(msg), self._seq, msg), key=lambda e: (e[0], e[1]))
            if len(q) > self.queue_size:
                del q[0]
                self.dropped += 1
            while all(self._queues):
                group = self._match()
                if group is None:
                    break
                ready.append(group)
        for group in ready:  # outside the lock: the callback may be slow
            self.signalMessage(*group)

    def _match(self):
        pivot = max(q[0][0] for q in self._queues)
        for q in self._queues:  # too old to ever pair with the queue that holds the pivot
            while q and q[0][0] < pivot - self.slop:
                q.pop(0)
                self.dropped += 1
        if not all(self._queues):
            return None
        picks = [min(range(len(q)), key=lambda i, q=q: abs(q[i][0] - pivot)) for q in self._queues]
        if any(abs(q[i][0] - pivot) > self.slop for q, i in zip(self._queues, picks)):
            return None
        group = tuple(q[i][2] for q, i in zip(self._queues, picks))
        for q, i in zip(self._queues, picks):
            self.dropped += i
            del q[: i + 1]
        self.matched += 1
        return group
