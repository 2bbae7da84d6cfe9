"""The model's own thread: one query at a time, a bounded number waiting, the rest refused.

Service callbacks call `QueryWorker.run(fn)` from executor threads; it blocks the calling
thread only, so intake and TF (other callback groups) keep flowing. Admission is decided
at once (running + waiting <= 1 + max_waiting), so a burst of calls can never take all
executor threads; a waiting call gives up after wait_timeout_s. `stop()` releases every
caller at once so shutdown never waits for a model that is still generating.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable


class Refused(RuntimeError):
    """The query was not run (busy, waited too long, or shutting down); str() says why."""


class _Job:
    def __init__(self, fn: Callable, args: tuple):
        self.fn, self.args = fn, args
        self.started = threading.Event()
        self.done = threading.Event()
        self.cancelled = False
        self.result = None
        self.error: BaseException | None = None


class QueryWorker:
    def __init__(self, max_waiting: int = 1, wait_timeout_s: float = 30.0, name: str = "query-worker"):
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.max_waiting, self.wait_timeout_s = int(max_waiting), float(wait_timeout_s)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._admitted = 0
        self._stopped = False
        self._current: _Job | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A query is running now."""
        return self._current is not None

    def run(self, fn: Callable, *args):
        """Run fn(*args) on the worker thread and return its result (its exception is
        re-raised here). Raises Refused when it cannot be run."""
        with self._lock:
            if self._stopped:
                raise Refused("the node is shutting down")
            if self._admitted >= 1 + self.max_waiting:
                raise Refused(f"busy: a query is running and {self.max_waiting} "
                              f"{'is' if self.max_waiting == 1 else 'are'} waiting (query_queue_size); try again later")
            self._admitted += 1
        job = _Job(fn, args)
        try:
            self._jobs.put(job)
            if not self._wait(job.started, self.wait_timeout_s):
                with self._lock:
                    job.cancelled = not job.started.is_set()
                if job.cancelled and self._stopped:
                    raise Refused("the node is shutting down")
                if job.cancelled:
                    raise Refused(f"busy: waited {self.wait_timeout_s:g} s (query_wait_s) for the running query")
            self._wait(job.done, None)
            if self._stopped and not job.done.is_set():
                raise Refused("the node is shutting down")
        finally:
            with self._lock:
                self._admitted -= 1
        if job.error is not None:
            raise job.error
        return job.result

    def stop(self, timeout_s: float = 0.0) -> bool:
        """Refuse new queries, release every waiting caller, and let the thread end once the
        running query returns. Returns whether the thread ended within timeout_s."""
        with self._lock:
            self._stopped = True
        self._jobs.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait for event, waking up to notice stop(); False on timeout or stop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not event.wait(0.05):
            if self._stopped or (deadline is not None and time.monotonic() >= deadline):
                return event.is_set()
        return True

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopped:
                return
            with self._lock:
                if job.cancelled:
                    continue
                job.started.set()
                self._current = job
            try:
                job.result = job.fn(*job.args)
            except BaseException as err:  # noqa: BLE001 (handed to the caller, who reports it)
                job.error = err
            finally:
                self._current = None
                job.done.set()
