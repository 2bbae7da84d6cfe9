"""~/ask and ~/ground as ROS 2 actions beside the services of the same names, and the outputs
every answer updates: ~/markers and ~/detections.

An action goal is the service request; it runs through the node's own query path (the same
validation, the same QueryWorker admission: a goal that cannot run is aborted with the reason
the service would give), with the answer streamed: after each token the reasoner reports the text
so far, and each box the moment its </bbox> closes, already rotated back to world_frame.
Feedback carries the text, the boxes so far, the token count and the elapsed time; a token
without a new box is sent at most every FEEDBACK_PERIOD_S, a box at once. When a streamed
question starts, ~/markers gets a DELETEALL; each closed box then goes out with the boxes before
it (their ids are those of the final answer), and ~/detections (vision_msgs/Detection3DArray)
with them. A cancel request stops the model at its next token; the goal ends CANCELED with the
text and boxes written so far, and the model is free for the next question.
"""
from __future__ import annotations

import time

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from vision_msgs.msg import Detection3DArray

from gs_reasoner_ros.action import AskSpatialQuestion, GroundObjects
from gs_reasoner_ros.pipeline.queries import QueryOutcome, QueryProgress
from gs_reasoner_ros.ros import conversions, qos
from gs_reasoner_ros.ros.conversions.detections import detection_array
from gs_reasoner_ros.ros.conversions.markers import box_markers

FEEDBACK_PERIOD_S = 0.05  # text-only feedback at most 20 times a second: a client needs no more


class AnswerOutputs:
    """~/markers and ~/detections for the node's answers (services and actions)."""

    def __init__(self, node):
        self.node = node
        g = node._groups["output"]
        self.markers = node._pubs["markers"]
        self.detections = node.create_publisher(Detection3DArray, "~/detections", qos.LATCHED, callback_group=g)

    def _stamp(self, stamp: float | None) -> float:
        return stamp if stamp is not None else self.node.get_clock().now().nanoseconds * 1e-9

    def question_started(self) -> None:
        """A streamed question begins: the previous answer's boxes go."""
        frame, stamp = self.node.p.world_frame, self._stamp(None)
        self.markers.publish(box_markers([], frame, stamp))
        self.detections.publish(detection_array([], frame, stamp))

    def boxes(self, objects, stamp: float | None, new_answer: bool) -> None:
        """Every box of the answer so far; new_answer (a service's whole answer) clears first."""
        frame, stamp = self.node.p.world_frame, self._stamp(stamp)
        self.markers.publish(box_markers(objects, frame, stamp, delete_all=new_answer))
        self.detections.publish(detection_array(objects, frame, stamp))


class _GoalStream:
    """QueryEngine's on_progress for one goal: feedback, streamed boxes, cancel."""

    def __init__(self, goal_handle, feedback_type, outputs: AnswerOutputs):
        self.goal, self.feedback_type, self.outputs = goal_handle, feedback_type, outputs
        self.sent_at = -1.0  # monotonic time of the last feedback
        self.feedbacks = 0

    def __call__(self, progress: QueryProgress) -> bool:
        if self.goal.is_cancel_requested:
            return True
        if progress.tokens == 1:
            self.outputs.question_started()
        if progress.new_objects:
            self.outputs.boxes(progress.objects, None, new_answer=False)
        now = time.monotonic()
        if progress.new_objects or progress.tokens == 1 or now - self.sent_at >= FEEDBACK_PERIOD_S:
            self.sent_at = now
            self.feedbacks += 1
            self.goal.publish_feedback(self.feedback_type(
                text=progress.text, objects=[conversions.grounded_object_msg(o) for o in progress.objects],
                tokens=int(progress.tokens), elapsed_s=float(progress.elapsed_s)))
        return self.goal.is_cancel_requested


class QueryActions:
    """The ~/ask and ~/ground action servers of `node` (a ReasonerNode)."""

    def __init__(self, node, outputs: AnswerOutputs):
        self.node, self.outputs = node, outputs
        # Reentrant: a cancel is served while a goal executes. The goal, result and cancel
        # services keep a burst of requests (rclpy's default keeps 10: 40 concurrent goals lost some).
        common = dict(callback_group=node._groups["services"], goal_callback=self._on_goal,
                      cancel_callback=lambda _: CancelResponse.ACCEPT, goal_service_qos_profile=qos.SERVICES,
                      result_service_qos_profile=qos.SERVICES, cancel_service_qos_profile=qos.SERVICES)
        self.servers = [ActionServer(node, AskSpatialQuestion, "~/ask", self._execute_ask, **common),
                        ActionServer(node, GroundObjects, "~/ground", self._execute_ground, **common)]

    @staticmethod
    def _on_goal(_request) -> GoalResponse:
        # Every goal is accepted: one that cannot run ends ABORTED with the reason in its
        # result's message (a rejected goal could not say why).
        return GoalResponse.ACCEPT

    def _execute_ask(self, goal_handle):
        g = goal_handle.request
        outcome = self._run(goal_handle, AskSpatialQuestion.Feedback, lambda e, limits: e.prepare_ask(
            g.question, list(g.options), g.direct, g.max_new_tokens, limits))
        result = AskSpatialQuestion.Result(answer=outcome.answer, reasoning=outcome.reasoning)
        return self._finish(goal_handle, result, outcome)

    def _execute_ground(self, goal_handle):
        g = goal_handle.request
        outcome = self._run(goal_handle, GroundObjects.Feedback, lambda e, limits: e.prepare_ground(
            g.description, g.max_new_tokens, limits))
        return self._finish(goal_handle, GroundObjects.Result(), outcome)

    def _run(self, goal_handle, feedback_type, prepare) -> QueryOutcome:
        stream = _GoalStream(goal_handle, feedback_type, self.outputs)
        return self.node._query(prepare, on_progress=stream)

    def _finish(self, goal_handle, result, outcome: QueryOutcome):
        node = self.node
        conversions.fill_query_response(result, outcome, node.p.world_frame, node.get_clock().now().nanoseconds * 1e-9)
        if outcome.success:
            goal_handle.succeed()
        elif goal_handle.is_cancel_requested:
            if not outcome.cancelled:  # cancelled before the model produced its first token
                result.message = "; ".join(m for m in ("cancelled before the model started", outcome.message) if m)
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return result

    def destroy(self) -> None:
        for server in self.servers:
            server.destroy()
