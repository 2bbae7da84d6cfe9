"""Health figures of the live pipeline, and the reporter that counts and logs its faults.

Thread-safe counters and windowed rates (Health) are what /diagnostics shows; Reporter is how
every part of the pipeline says that it rejected something: counted, kept as the last reason,
and logged at most once per call site and period.
"""
from __future__ import annotations

import collections
import math
import sys
import threading
import time

RATE_WINDOW_S = 5.0
WARN_THROTTLE_S = 5.0
MAX_TEXT = 400  # characters of any text kept or logged: a peer controls what goes into them


def bounded(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class Distribution:
    """Quantiles of a stream of positive values (e.g. milliseconds) since the start, in constant
    memory: counts in geometric bins 2 % wide, so a quantile is off by at most 2 %. The node
    observes every fused frame; a window of samples would show only the last seconds."""

    RATIO = 1.02
    FLOOR = 1e-4  # values below this count in the lowest bin

    def __init__(self):
        self.count, self.max = 0, 0.0
        self._bins: collections.Counter = collections.Counter()

    def add(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            return
        self._bins[int(math.log(max(value, self.FLOOR) / self.FLOOR, self.RATIO))] += 1
        self.count += 1
        self.max = max(self.max, value)

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1): the upper edge of the bin holding it, capped at the maximum."""
        if not self.count:
            return float("nan")
        rank, seen = q * self.count, 0
        for b in sorted(self._bins):
            seen += self._bins[b]
            if seen >= rank:
                return min(self.FLOOR * self.RATIO ** (b + 1), self.max)
        return self.max


class Health:
    """Counters (monotonic totals), rates over the last few seconds, and last values."""

    def __init__(self, clock=time.monotonic, window_s: float = RATE_WINDOW_S):
        self._clock, self._window = clock, window_s
        self._lock = threading.Lock()
        self._counts: dict[str, int] = collections.Counter()
        self._ticks: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._values: dict[str, object] = {}
        self._distributions: dict[str, Distribution] = collections.defaultdict(Distribution)

    def observe(self, name: str, value: float) -> None:
        """Add a sample to distribution `name` (/diagnostics shows its p50, p95, max, count)."""
        with self._lock:
            self._distributions[name].add(value)

    def count(self, name: str, n: int = 1) -> int:
        """Add n to counter `name` (its rate is tracked too); returns the new total."""
        now = self._clock()
        with self._lock:
            self._counts[name] += n
            ticks = self._ticks[name]
            ticks.extend([now] * n)
            self._trim(ticks, now)
            return self._counts[name]

    def set(self, name: str, value) -> None:
        with self._lock:
            self._values[name] = bounded(value) if isinstance(value, str) else value

    def total(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def rate(self, name: str) -> float:
        """Events per second over the window (over the time since the first event if shorter)."""
        now = self._clock()
        with self._lock:
            ticks = self._ticks[name]
            self._trim(ticks, now)
            return len(ticks) / self._window if ticks else 0.0

    def snapshot(self) -> dict:
        with self._lock:
            names = list(self._counts)
        out = {f"{n}_total": self.total(n) for n in names}
        out.update({f"{n}_hz": round(self.rate(n), 2) for n in names})
        with self._lock:
            out.update(self._values)
            for n, d in self._distributions.items():
                out.update({f"{n}_p50": round(d.quantile(0.5), 3), f"{n}_p95": round(d.quantile(0.95), 3),
                            f"{n}_max": round(d.max, 3), f"{n}_count": d.count})
        return out

    def _trim(self, ticks: collections.deque, now: float) -> None:
        while ticks and ticks[0] < now - self._window:
            ticks.popleft()


class Reporter:
    """Counts, records and logs faults for a `logger` with debug/info/warning/error methods
    (rclpy's or the logging module's)."""

    def __init__(self, health: Health, logger, period_s: float = WARN_THROTTLE_S):
        self.health, self.logger, self.period_s = health, logger, period_s
        self._last_logged: dict = {}  # call site -> when it last logged

    def throttled(self, level: str, text: str, period_s: float | None = None, site=None) -> None:
        """At most one message per call site and period. Rate-limited here rather than by rclpy's
        logger, which looks up its caller's source file on every call (milliseconds of stat
        calls), even when it then drops the message."""
        site = site or sys._getframe(1).f_code
        now = time.monotonic()
        if now - self._last_logged.get(site, -float("inf")) < (self.period_s if period_s is None else period_s):
            return
        self._last_logged[site] = now
        getattr(self.logger, level)(bounded(text, 2 * MAX_TEXT))

    def reject(self, what: str, err) -> None:
        """Bad input that was refused: counted as rejected, with the reason kept."""
        n = self.health.count("rejected")
        self.health.set("last_rejection", f"{what}: {err}")
        self.throttled("warning", f"rejected {what}: {err} ({n} so far)", site="reject")

    def tf_failure(self, why: str) -> None:
        """A frame dropped for want of its pose."""
        n = self.health.count("tf_failures")
        self.health.set("last_tf_failure", why)
        self.throttled("warning", f"dropped a frame: {why} ({n} so far)", site="tf_failure")


def accelerator_memory() -> dict:
    """GPU memory this process holds through torch, in MB ({} before it used CUDA): what
    /diagnostics shows so a long run's memory can be watched from outside."""
    torch = sys.modules.get("torch")  # never import torch just to say it is unused
    try:
        if torch is None or not torch.cuda.is_initialized():
            return {}
        return {"gpu_allocated_mb": round(torch.cuda.memory_allocated() / 2**20, 1),
                "gpu_reserved_mb": round(torch.cuda.memory_reserved() / 2**20, 1)}
    except Exception:  # noqa: BLE001 (a driver error must not break /diagnostics)
        return {}
