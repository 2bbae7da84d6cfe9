"""A short soak through the running node process over DDS (gs_reasoner_ros.tools.soak): 600 synced
640x480 frames at 15 Hz (real time) with interleaved queries and one storm of 50 concurrent
calls. Memory stays flat after warm-up, the stores stay within their caps, queries are answered,
the backlog does not grow, and the node exits cleanly."""
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("psutil")

from gs_reasoner_ros.tools.soak import STORM_CALLS, SoakConfig, run_soak  # noqa: E402

KEYFRAMES, VOXELS = 8, 50_000


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    # Real time at 15 Hz, the rate the node must sustain while queries run (issue 5): there the
    # backlog must not grow. 2x real time overloads this 2-core machine by design; the long soak
    # (gs-reasoner soak --rate 30) reports that regime instead of asserting on it.
    cfg = SoakConfig(frames=600, rate=15.0, stamp_hz=15.0, loop_frames=40, query_every=2.0, storm_at=330,
                     sample_s=1.0, max_keyframes=KEYFRAMES, max_voxels=VOXELS,
                     out=str(tmp_path_factory.mktemp("soak")))
    return run_soak(cfg, log=lambda *_: None)


def test_memory_is_flat_after_warm_up(soak):
    # warm: both stores full (8 keyframes come early) and 200 frames sent; a leak of one
    # keyframe-sized image per 10 frames fused would then add 80 MB or more by the end
    assert soak["warmed_up"] and soak["warmup_frames"] <= 300, soak
    assert soak["rss_growth_after_warmup_mb"] < 40, soak
    assert soak["rss_max_after_warmup_mb"] < soak["rss_warmup_mb"] + 50, soak


def test_stores_fill_up_to_their_caps_and_no_further(soak):
    assert soak["keyframes_max"] == KEYFRAMES  # reached, so eviction ran
    assert 0.5 * VOXELS < soak["map_points_max"] <= VOXELS


def test_frames_flow_and_the_backlog_does_not_grow(soak):
    # How many frames a 2-core machine shared with other work takes at 2x real time varies a
    # lot (15 to 70 %); what must hold is that intake keeps going and never falls further behind.
    assert soak["frames_sent"] == 600 and soak["frames_integrated_after_warmup"] >= 15, soak
    assert soak["frames_rejected"] == 0
    assert soak["time_jump_resets"] == 0 and soak["relocalizations"] == 0  # the loop is closed and smooth
    assert soak["lag_s_mean_last_third"] < soak["lag_s_mean_first_third"] + 1.0, soak
    assert soak["tf_waiting_max"] <= 8  # tf_pending_frames bounds the frames waiting for their pose


def test_queries_are_answered_and_the_storm_gets_answers_or_refusals(soak):
    assert soak["queries_ok"] >= 5 and soak["queries_failed"] == 0 and soak["queries_hung"] == 0, soak
    storm = soak["storm"]
    assert storm["answered"] + storm["refused"] == STORM_CALLS and storm["answered"] >= 1, storm
    assert storm["hung"] == 0 and storm["other_failures"] == 0
    assert storm["synced_during"] > 0  # intake kept running during the storm


def test_node_exits_cleanly(soak):
    log = (Path(soak["out"]) / "node.log").read_text(errors="replace")[-4000:]
    assert soak["node_exit_code"] == 0 and soak["node_exit_s"] < 2.0, log
