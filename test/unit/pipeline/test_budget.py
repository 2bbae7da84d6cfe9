"""The node's memory budget (pipeline/budget.py): sizes that match what is kept, and the heap trim."""
from __future__ import annotations

from gs_reasoner_ros.pipeline import budget


def test_the_memory_budget_counts_a_frame_cache_entry_at_its_real_size():
    """budget.FRAME_CACHE_ENTRY_BYTES is what the model's FrameCache keeps per frame (an entry
    counted too small let 716 keyframes take 8.2 MB each against a 5.6 MB estimate)."""
    from gs_reasoner_ros.model.preprocess import FrameCache
    from gs_reasoner_ros.synthetic import synthetic_scene

    scene, _ = synthetic_scene(seed=1, n_frames=1, width=640, height=480)
    cache = FrameCache()
    cache.add(scene)
    (pixels, points), = cache._frames.values()
    assert pixels.numel() * pixels.element_size() + points.numel() * points.element_size() \
        == budget.FRAME_CACHE_ENTRY_BYTES


def test_the_heap_is_trimmed_at_most_once_a_period(monkeypatch):
    calls, now = [], [0.0]
    monkeypatch.setattr(budget, "trim_heap", lambda: calls.append(now[0]) or True)
    trim = budget.PeriodicTrim(10.0, clock=lambda: now[0])
    for t in range(0, 35):
        now[0] = float(t)
        trim()
    assert calls == [10.0, 20.0, 30.0]
