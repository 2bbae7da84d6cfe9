"""The planner side of `gs-reasoner bench node`: calls the node's services as planners do and
measures every answer at the client, while a sampler records memory and the intake backlog.

One cycle: the camera moves (new keyframes), ~/ground; the camera holds still, ~/ask with the
chain of thought (its full token budget: the bench's node decodes past eos), then a follow-up
~/ask on the same keyframes (a short direct answer). Every few cycles ~/export_scene or ~/clear;
once, 10 callers at the same moment. A follow-up counts as "on unchanged keyframes" when its
answer's header stamp (the newest keyframe used) is the chain of thought's.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

QUESTIONS = ("Where is the chair closest to the window?", "How far is the sofa from the table?",
             "Which is closer to the door, the lamp or the bed?")
CONCURRENT_CALLERS = 10


@dataclass
class Plan:
    ground_tokens: int = 64
    cot_tokens: int = 256
    followup_tokens: int = 16
    move_s: float = 0.5  # camera motion before each grounding (new keyframes)
    settle_s: float = 0.2  # after `hold`, for frames in flight to land
    export_every: int = 10  # cycles
    clear_every: int = 25
    min_keyframes: int = 8  # before a cycle starts (after ~/clear the store is empty)
    timeout_s: float = 120.0


@dataclass
class Calls:
    """Client-side latencies and outcomes per kind of call."""

    latencies: dict = field(default_factory=dict)  # kind -> [seconds] of successful calls
    failures: dict = field(default_factory=dict)  # kind -> count
    messages: list = field(default_factory=list)  # first failure messages

    def record(self, kind: str, seconds: float, resp) -> None:
        if resp is not None and resp.success:
            self.latencies.setdefault(kind, []).append(seconds)
        else:
            self.failures[kind] = self.failures.get(kind, 0) + 1
            if len(self.messages) < 8:
                self.messages.append(f"{kind}: {'no answer' if resp is None else resp.message[:200]}")

    def count(self, kind: str) -> int:
        return len(self.latencies.get(kind, []))

    def total(self) -> int:
        return sum(map(len, self.latencies.values()))

    def quantiles(self, kind: str) -> tuple[float | None, float | None]:
        values = self.latencies.get(kind)
        if not values:
            return None, None
        return round(float(np.percentile(values, 50)), 4), round(float(np.percentile(values, 95)), 4)


class Client:
    """Calls on a Probe (background-spun) beside the node; `camera(word)` sends hold/move."""

    def __init__(self, probe, camera, plan: Plan, log=print):
        self.probe, self.camera, self.plan, self.log = probe, camera, plan, log
        self.calls = Calls()
        self.followup_same_keyframes = 0
        self.concurrent: dict = {}
        self.cycles = 0

    def call(self, kind: str, service: str, **fields):
        """One blocking call, timed at the client; (response or None, seconds)."""
        future = self.probe.call_async(service, **fields)
        t0 = time.monotonic()
        done = self.probe.spin_until(future.done, self.plan.timeout_s)
        seconds = time.monotonic() - t0
        resp = future.result() if done else None
        self.calls.record(kind, seconds, resp)
        return resp, seconds

    def wait_keyframes(self, least: int, timeout_s: float = 60.0) -> bool:
        return self.probe.spin_until(lambda: self.probe.diag_value("keyframes") >= least, timeout_s)

    def cycle(self) -> None:
        p, i = self.plan, self.cycles
        self.cycles += 1
        self.camera("move")
        time.sleep(p.move_s)
        self.wait_keyframes(p.min_keyframes)
        self.call("ground", "ground", description="the chair closest to the window", max_new_tokens=p.ground_tokens)
        self.camera("hold")
        time.sleep(p.settle_s)
        cot, _ = self.call("cot256", "ask", question=QUESTIONS[i % len(QUESTIONS)], max_new_tokens=p.cot_tokens)
        follow, _ = self.call("followup", "ask", question="How many lamps are in the room?", direct=True,
                              max_new_tokens=p.followup_tokens)
        if cot is not None and follow is not None and cot.success and follow.success and (
                cot.header.stamp == follow.header.stamp):
            self.followup_same_keyframes += 1
        if p.export_every and i % p.export_every == p.export_every - 1:
            self.call("export_scene", "export_scene", name=f"bench_{i}")
        if p.clear_every and i % p.clear_every == p.clear_every - 1:
            self.call("clear", "clear")
            self.camera("move")
            self.wait_keyframes(p.min_keyframes)

    def concurrent_callers(self, n: int = CONCURRENT_CALLERS) -> dict:
        """n ~/ask calls sent at the same moment: how many were answered, refused (busy), lost."""
        self.camera("hold")
        self.wait_keyframes(self.plan.min_keyframes)  # not right after a ~/clear: "no keyframes" says nothing
        t0 = time.monotonic()
        futures = [self.probe.call_async("ask", question=f"How many chairs are there? ({k})", direct=True,
                                         max_new_tokens=self.plan.followup_tokens) for k in range(n)]
        done_at: dict[int, float] = {}

        def all_done() -> bool:
            for k, f in enumerate(futures):
                if f.done() and k not in done_at:
                    done_at[k] = time.monotonic() - t0
            return len(done_at) == n

        self.probe.spin_until(all_done, self.plan.timeout_s)
        results = [f.result() if f.done() else None for f in futures]
        self.concurrent = {
            "callers": n,
            "answered": sum(1 for r in results if r is not None and r.success),
            "refused_busy": sum(1 for r in results if r is not None and not r.success and "busy" in r.message),
            "other_failures": sum(1 for r in results if r is not None and not r.success and "busy" not in r.message),
            "unanswered": sum(1 for r in results if r is None),
            "all_replied_s": round(max(done_at.values()), 3) if done_at else None,
        }
        return self.concurrent


class Sampler:
    """Every `period_s`: node RSS (psutil), GPU memory and stores from /diagnostics, the backlog
    (wall clock minus the newest fused frame's stamp), and how many queries were answered."""

    def __init__(self, probe, pid: int, calls: Calls, period_s: float):
        import psutil

        self.probe, self.calls, self.period_s = probe, calls, period_s
        self.proc = psutil.Process(pid)
        self.rows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(5.0)
        self.sample()
        return self.rows

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def sample(self) -> None:
        v = self.probe.diag_value
        try:
            rss_mb = self.proc.memory_info().rss / 2**20
        except Exception:  # noqa: BLE001 (the node exited)
            rss_mb = float("nan")
        newest = v("newest_integrated_stamp")
        self.rows.append({"t_s": round(time.monotonic() - self.t0, 1), "queries": self.calls.total(),
                          "rss_mb": round(rss_mb, 1), "gpu_allocated_mb": v("gpu_allocated_mb", float("nan")),
                          "gpu_reserved_mb": v("gpu_reserved_mb", float("nan")), "keyframes": v("keyframes"),
                          "map_points": v("map_points"), "intake_waiting": v("intake_waiting"),
                          "tf_waiting": v("tf_waiting"),
                          "backlog_ms": round((time.time() - newest) * 1e3, 1) if newest > 0 else float("nan")})


def slope_per_1k(rows: list[dict], key: str, steady=None, scale: float = 1.0) -> float | None:
    """Least-squares slope of rows[key] * scale against answered queries, per 1,000 queries,
    over the samples in the steady state (`steady(row)`, e.g. the stores at their caps; where
    fewer than 3 are, the run after its first quarter)."""
    chosen = [r for r in rows if steady is not None and steady(r)]
    rows = [r for r in (chosen if len(chosen) >= 3 else rows[len(rows) // 4:]) if np.isfinite(r[key])]
    x = np.array([r["queries"] for r in rows], dtype=float)
    if len(rows) < 3 or np.ptp(x) == 0:
        return None
    y = np.array([r[key] * scale for r in rows])
    return round(float(np.polyfit(x, y, 1)[0] * 1000), 4)


def backlog_growth_ms(rows: list[dict]) -> float | None:
    """Mean backlog of the last third of the samples minus that of the first third (ms): about
    0 when intake keeps up, growing with the run when it does not."""
    values = np.array([r["backlog_ms"] for r in rows if np.isfinite(r["backlog_ms"])])
    if len(values) < 3:
        return None
    third = len(values) // 3
    return round(float(values[-third:].mean() - values[:third].mean()), 1)
