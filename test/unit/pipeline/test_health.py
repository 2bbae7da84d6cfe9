"""Health's distributions: quantiles of every sample since the start, within their 2 % bins."""
from __future__ import annotations

import numpy as np

from gs_reasoner_ros.pipeline.health import Distribution, Health


def test_quantiles_match_numpy_within_the_bin_width():
    values = np.random.default_rng(0).lognormal(mean=0.0, sigma=1.0, size=5000)
    d = Distribution()
    for v in values:
        d.add(v)
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q))
        assert exact * 0.98 <= d.quantile(q) <= exact * 1.03, (q, exact, d.quantile(q))
    assert d.count == 5000 and d.max == values.max()


def test_empty_tiny_and_non_finite_values():
    d = Distribution()
    assert np.isnan(d.quantile(0.5))
    d.add(float("nan"))
    d.add(float("inf"))
    assert d.count == 0
    d.add(0.0)  # below the floor: counted in the lowest bin, never more than the maximum
    assert d.count == 1 and d.quantile(0.5) == 0.0


def test_the_snapshot_shows_each_distribution():
    h = Health()
    for ms in (1.0, 2.0, 3.0, 100.0):
        h.observe("integrate_ms", ms)
    snap = h.snapshot()
    assert snap["integrate_ms_count"] == 4 and snap["integrate_ms_max"] == 100.0
    assert 1.9 <= snap["integrate_ms_p50"] <= 2.05 and snap["integrate_ms_p95"] == 100.0
