"""The approximate-time synchronizer: pairing with jitter, drops, queue bounds."""
import random
from types import SimpleNamespace

import pytest

from gs_reasoner_ros.pipeline.sync_matcher import ApproximateTimeSynchronizer, SimpleFilter


def msg(t, tag):
    sec = int(t)
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=round((t - sec) * 1e9))),
                           tag=tag, t=t)


def make(n=3, queue_size=10, slop=0.01):
    inputs = [SimpleFilter() for _ in range(n)]
    sync = ApproximateTimeSynchronizer(inputs, queue_size, slop)
    out = []
    sync.registerCallback(lambda *group: out.append(group))
    return inputs, sync, out


def test_groups_frames_with_jitter_and_independent_latencies():
    inputs, sync, out = make(slop=0.01)
    rnd = random.Random(1)
    events = []
    for i in range(3):  # 30 Hz, stamps jittered by up to 3 ms, each topic delayed 0-80 ms (in order)
        arrival = 0.0
        for k in range(40):
            t = 100 + k / 30 + rnd.uniform(-0.003, 0.003)
            arrival = max(arrival, t + rnd.uniform(0.0, 0.08))
            events.append((arrival, i, msg(t, (k, i))))
    for _, i, m in sorted(events, key=lambda e: e[0]):
        inputs[i].signalMessage(m)
    assert len(out) == 40 and sync.dropped == 0
    for k, group in enumerate(out):
        assert [m.tag for m in group] == [(k, 0), (k, 1), (k, 2)]
    assert sync.matched == 40


def test_a_frame_missing_on_one_input_is_dropped_not_mispaired():
    inputs, sync, out = make(n=2, slop=0.005)
    for k in range(10):
        t = k * 0.1
        inputs[0].signalMessage(msg(t, k))
        if k != 4:  # depth of frame 4 lost
            inputs[1].signalMessage(msg(t + 0.001, k))
    assert [g[0].tag for g in out] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert all(a.tag == b.tag for a, b in out)
    assert sync.dropped == 1  # the orphaned colour frame 4


def test_messages_outside_slop_never_pair():
    inputs, sync, out = make(n=2, slop=0.01)
    for k in range(5):
        inputs[0].signalMessage(msg(k * 1.0, k))
        inputs[1].signalMessage(msg(k * 1.0 + 0.5, k))  # always 0.5 s apart
    assert out == []
    assert sync.dropped >= 8


def test_queue_size_bounds_waiting_messages():
    inputs, sync, out = make(n=2, queue_size=3)
    for k in range(10):
        inputs[0].signalMessage(msg(k * 0.1, k))  # the other input is silent
    assert sync.dropped == 7 and out == []
    inputs[1].signalMessage(msg(0.9, "late"))
    assert [(a.tag, b.tag) for a, b in out] == [(9, "late")]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        ApproximateTimeSynchronizer([SimpleFilter()], 0, 0.1)
    with pytest.raises(ValueError):
        ApproximateTimeSynchronizer([SimpleFilter()], 5, -1.0)
