"""The planners' Python client of a running gs_reasoner node: ~/ask and ~/ground through their
actions, blocking or as a stream of feedback, with timeouts and cancel.

    from gs_reasoner_ros.client import ReasonerClient

    with ReasonerClient() as reasoner:                       # its own ROS context and thread
        result = reasoner.ground("the red mug", timeout_s=30)  # blocking: the action's Result
        goal = reasoner.ask_stream("Is the door on my left?", options=["A. yes", "B. no"])
        for feedback in goal:                                # text, objects (world_frame), tokens, elapsed_s
            if feedback.objects:
                goal.cancel()                                # the model stops at its next token
        print(goal.result().message, goal.status)

Given `node=`, the client adds its action clients to that node and leaves spinning it to the
caller (on an executor thread other than the one that waits for a result).
"""
from __future__ import annotations

import queue
import threading
import time

import rclpy
from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor

from gs_reasoner_ros.action import AskSpatialQuestion, GroundObjects
from gs_reasoner_ros.ros import qos
from gs_reasoner_ros.ros.spinning import spin_in_background

DEFAULT_NODE = "/gs_reasoner"
_DONE = object()
STATUS_NAMES = {GoalStatus.STATUS_SUCCEEDED: "succeeded", GoalStatus.STATUS_ABORTED: "aborted",
                GoalStatus.STATUS_CANCELED: "canceled", GoalStatus.STATUS_UNKNOWN: "unknown"}


class GoalStream:
    """One goal in flight. Iterating yields its feedback in the order the node sent it and ends
    when the result is in; result() waits for the Result; cancel() asks the node to stop."""

    def __init__(self, action_client: ActionClient, goal, timeout_s: float | None):
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._items: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._accepted = threading.Event()
        self._handle = None
        self._result = None
        self.status = GoalStatus.STATUS_UNKNOWN
        self.error = ""  # why the goal never ran (rejected, or the request failed)
        future = action_client.send_goal_async(goal, feedback_callback=lambda fb: self._items.put(fb.feedback))
        future.add_done_callback(self._on_sent)

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, str(self.status))

    def _on_sent(self, future) -> None:
        handle = future.result() if future.exception() is None else None
        if handle is None or not handle.accepted:
            self.error = "the node rejected the goal" if handle is not None else f"sending failed: {future.exception()}"
            self._finish()
            return
        self._handle = handle
        self._accepted.set()
        handle.get_result_async().add_done_callback(self._on_result)

    def _on_result(self, future) -> None:
        response = future.result()
        self._result, self.status = response.result, response.status
        self._finish()

    def _finish(self) -> None:
        self._accepted.set()
        self._done.set()
        self._items.put(_DONE)

    def _left(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def __iter__(self):
        while True:
            try:
                item = self._items.get(timeout=self._left())
            except queue.Empty:
                self._timed_out()
            if item is _DONE:
                return
            yield item

    def result(self, timeout_s: float | None = None):
        """The action's Result (success, message, ...). On timeout (this call's, else the goal's)
        the goal is cancelled and TimeoutError raised; RuntimeError when it never ran."""
        wait = self._left() if timeout_s is None else timeout_s
        if not self._done.wait(wait):
            self._timed_out()
        if self._result is None:
            raise RuntimeError(self.error or "the goal ended without a result")
        return self._result

    def cancel(self, timeout_s: float = 10.0):
        """Ask the node to stop this goal and wait for its Result (status canceled, or the
        answer when it finished first)."""
        self._accepted.wait(timeout_s)
        if self._handle is not None and not self._done.is_set():
            self._handle.cancel_goal_async()
        return self.result(timeout_s)

    def _timed_out(self):
        if self._handle is not None and not self._done.is_set():
            self._handle.cancel_goal_async()
        raise TimeoutError("the goal did not finish in time; it was cancelled")


class ReasonerClient:
    """Action clients for the node `target` (e.g. /gs_reasoner). Without `node` it makes its
    own context, node and spinning thread (close() or a with-block ends them)."""

    def __init__(self, target: str = DEFAULT_NODE, node=None, name: str = "gs_reasoner_client"):
        self._ctx = self._executor = self._thread = None
        if node is None:
            self._ctx = rclpy.context.Context()
            rclpy.init(context=self._ctx)
            node = rclpy.create_node(name, context=self._ctx)
            self._executor = SingleThreadedExecutor(context=self._ctx)  # one thread: feedback stays in order
            self._executor.add_node(node)
        self.node = node
        # Deep reply queues: every client's reader receives every caller's replies, so rclpy's
        # default of 10 can push a caller's own reply out during a burst of calls.
        deep = dict(goal_service_qos_profile=qos.SERVICES, result_service_qos_profile=qos.SERVICES,
                    cancel_service_qos_profile=qos.SERVICES)
        self._clients = {"ask": ActionClient(node, AskSpatialQuestion, f"{target}/ask", **deep),
                         "ground": ActionClient(node, GroundObjects, f"{target}/ground", **deep)}
        if self._executor is not None:  # only now: rclpy lists an ActionClient on its node before it is built
            self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        spin_in_background(self._executor, self._ctx, lambda: True)

    def wait_for_server(self, timeout_s: float = 30.0) -> bool:
        """True once both actions are served."""
        deadline = time.monotonic() + timeout_s
        return all(c.wait_for_server(timeout_sec=max(0.0, deadline - time.monotonic()))
                   for c in self._clients.values())

    def ask_stream(self, question: str, options=(), direct: bool = False, max_new_tokens: int = 0,
                   timeout_s: float | None = None) -> GoalStream:
        goal = AskSpatialQuestion.Goal(question=question, options=list(options), direct=direct,
                                       max_new_tokens=max_new_tokens)
        return GoalStream(self._clients["ask"], goal, timeout_s)

    def ground_stream(self, description: str, max_new_tokens: int = 0, timeout_s: float | None = None) -> GoalStream:
        goal = GroundObjects.Goal(description=description, max_new_tokens=max_new_tokens)
        return GoalStream(self._clients["ground"], goal, timeout_s)

    def ask(self, question: str, options=(), direct: bool = False, max_new_tokens: int = 0,
            timeout_s: float | None = 120.0):
        """Blocking ~/ask: the Result (TimeoutError after timeout_s, the goal cancelled)."""
        return self.ask_stream(question, options, direct, max_new_tokens, timeout_s).result()

    def ground(self, description: str, max_new_tokens: int = 0, timeout_s: float | None = 120.0):
        """Blocking ~/ground: the Result (TimeoutError after timeout_s, the goal cancelled)."""
        return self.ground_stream(description, max_new_tokens, timeout_s).result()

    def close(self) -> None:
        for c in self._clients.values():
            c.destroy()
        if self._ctx is not None:
            self._ctx.try_shutdown()
            self._thread.join(2.0)
            self._executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()

    def __enter__(self) -> "ReasonerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
