"""Health figures of the live pipeline, and the reporter that counts and logs its faults.

Thread-safe counters and windowed rates (Health) are what /diagnostics shows; Reporter is how
every part of the pipeline says that it rejected something: counted, kept as the last reason,
and logged at most once per call site and period.
"""
from __future__ import annotations

import collections
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


class Health:
    """Counters (monotonic totals), rates over the last few seconds, and last values."""

    def __init__(self, clock=time.monotonic, window_s: float = RATE_WINDOW_S):
        self._clock, self._window = clock, window_s
        self._lock = threading.Lock()
        self._counts: dict[str, int] = collections.Counter()
        self._ticks: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._values: dict[str, object] = {}

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
