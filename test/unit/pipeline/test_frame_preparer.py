"""Keyframes are prepared for the model off the intake thread, and a slow or failing reasoner
never blocks the caller."""
import threading
import time

import numpy as np

from gs_reasoner_ros.pipeline.frame_preparer import FramePreparer
from gs_reasoner_ros.scene_memory import Frame


def frame(i):
    depth = np.full((6, 8), 1.0 + i, np.float32)
    return Frame(rgb=np.full((6, 8, 3), i, np.uint8), depth=depth, K=np.array([[5, 0, 4], [0, 5, 3], [0, 0, 1.0]]),
                 pose=np.eye(4), stamp=float(i))


class SlowReasoner:
    def __init__(self):
        self.lock = threading.Lock()  # held by a "query" in the test
        self.seen, self.ids = [], []

    def prepare_frames(self, scene):
        with self.lock:
            if scene.rgb[0, 0, 0, 0] == 99:
                raise ValueError("bad frame")
            self.seen.append((int(scene.rgb[0, 0, 0, 0]), float(scene.depth[0, 0, 0])))
            self.ids.append(scene.frame_ids)
            return 1


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():
        time.sleep(0.01)
    return cond()


def test_frames_reach_the_reasoner_as_one_frame_scenes():
    r = SlowReasoner()
    p = FramePreparer(r)
    for i in range(3):
        p.submit(frame(i))
    assert wait_for(lambda: len(r.seen) == 3)
    assert r.seen == [(0, 1.0), (1, 2.0), (2, 3.0)] and p.prepared == 3
    p.stop()


def test_submit_never_blocks_while_the_model_is_busy_and_keeps_the_newest():
    r = SlowReasoner()
    p = FramePreparer(r, max_pending=2)
    with r.lock:  # a query holds the model
        t0 = time.monotonic()
        for i in range(10):
            p.submit(frame(i))
        assert time.monotonic() - t0 < 0.1
    assert wait_for(lambda: len(r.seen) >= 2)
    time.sleep(0.1)
    # at most one frame was taken before the lock, then only the two newest were still queued
    assert [i for i, _ in r.seen][-2:] == [8, 9] and len(r.seen) <= 3
    p.stop()


def test_errors_are_reported_and_the_thread_goes_on():
    r, errors = SlowReasoner(), []
    p = FramePreparer(r, on_error=errors.append)
    p.submit(frame(99))
    p.submit(frame(1))
    assert wait_for(lambda: len(r.seen) == 1)
    assert len(errors) == 1 and "bad frame" in str(errors[0])
    p.stop()
    assert not p._thread.is_alive()


def test_frames_are_prepared_under_their_keyframe_ids():
    """The keyframe store's id travels with the frame, so the prepared entry is found again by
    a question's scene (whose frames carry the same ids), without hashing pixels."""
    from gs_reasoner_ros.model.preprocess import frame_key
    from gs_reasoner_ros.scene_memory import KeyframeStore

    store = KeyframeStore(min_interval_s=0.0)
    r = SlowReasoner()
    p = FramePreparer(r)
    kept = frame(1)
    assert store.offer(kept)
    p.submit(kept, store.frame_id(kept))
    p.submit(frame(2))  # no id: content-keyed as before
    assert wait_for(lambda: len(r.ids) == 2)
    scene = store.to_scene()
    assert r.ids[0] == scene.frame_ids and r.ids[1] is None
    prepared = type("S", (), {"frame_ids": r.ids[0]})
    assert frame_key(prepared, 0) == frame_key(scene, 0)
    p.stop()
