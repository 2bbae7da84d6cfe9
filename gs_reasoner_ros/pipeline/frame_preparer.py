"""Per-keyframe model preprocessing done as keyframes arrive, on a thread of its own.

Resizing and unprojecting 32 frames at question time costs most of a grounding answer's
latency on a GPU robot (0.6 s of 1.5 s on the H100). The reasoner can do that work per frame
ahead of time (`prepare_frames`), but it holds the model's lock while it does, so calling it
from the intake callback would stall intake during a query. This thread takes new keyframes
from a small queue (dropping the oldest when full: a frame not prepared is only prepared
later, at question time) and hands them to the reasoner one by one.
"""
from __future__ import annotations

import collections
import threading

import numpy as np

from gs_reasoner_ros.scene import Scene


class FramePreparer:
    def __init__(self, reasoner, on_error=None, max_pending: int = 8):
        self._reasoner, self._on_error = reasoner, on_error
        self._pending: collections.deque = collections.deque(maxlen=max_pending)
        self._wake = threading.Condition()
        self._stopped = False
        self.prepared = 0
        self._thread = threading.Thread(target=self._loop, name="frame-preparer", daemon=True)
        self._thread.start()

    def submit(self, frame, frame_id=None) -> None:
        """Queue a keyframe (gs_reasoner_ros.scene_memory.Frame) with the id its KeyframeStore
        gave it, so it is prepared under the key a question's scene will look it up by; never
        blocks."""
        with self._wake:
            self._pending.append((frame, frame_id))
            self._wake.notify()

    def stop(self, timeout_s: float = 1.0) -> None:
        with self._wake:
            self._stopped = True
            self._pending.clear()
            self._wake.notify()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                frame, frame_id = self._pending.popleft()
            try:
                scene = Scene(frame.rgb[None], frame.depth[None], frame.K, np.asarray(frame.pose)[None],
                              frame_ids=None if frame_id is None else [frame_id])
                self.prepared += self._reasoner.prepare_frames(scene)
            except Exception as err:  # noqa: BLE001 (a bad frame must not end the thread)
                if self._on_error is not None:
                    self._on_error(err)
