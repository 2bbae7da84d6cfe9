"""The node's lifecycle interface, served with request queues that hold a burst.

rcl creates a lifecycle node's services (~/change_state, ~/get_state, ...) with its default
service QoS, which keeps 10 requests: of 40 concurrent change_state calls, 28 were never answered.
So rcl's interface is turned off and the node serves the same five services and
~/transition_event itself: the services with qos.SERVICES in a callback group of their own,
answered by rclpy's own handlers; the events published, as rcl publishes them, by a thin wrapper
around the state machine (every transition, from a service or from the node, goes through it).
"""
from __future__ import annotations

from lifecycle_msgs.msg import State, Transition, TransitionEvent
from lifecycle_msgs.srv import ChangeState, GetAvailableStates, GetAvailableTransitions, GetState
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNodeMixin

from gs_reasoner_ros.ros import qos

# (service type, name, rclpy's handler): rclpy keeps the handlers private to its mixin.
SERVICES = (
    (ChangeState, "~/change_state", "_LifecycleNodeMixin__on_change_state"),
    (GetState, "~/get_state", "_LifecycleNodeMixin__on_get_state"),
    (GetAvailableStates, "~/get_available_states", "_LifecycleNodeMixin__on_get_available_states"),
    (GetAvailableTransitions, "~/get_available_transitions", "_LifecycleNodeMixin__on_get_available_transitions"),
    (GetAvailableTransitions, "~/get_transition_graph", "_LifecycleNodeMixin__on_get_transition_graph"),
)


class EventingStateMachine:
    """rclpy's LifecycleStateMachine, publishing a TransitionEvent after every step it takes."""

    def __init__(self, machine, publisher, clock):
        self._machine = machine
        self._publisher = publisher
        self._clock = clock

    def __getattr__(self, name):
        return getattr(self._machine, name)

    def trigger_transition_by_id(self, transition_id: int, publish: bool) -> None:
        self._step(lambda t: t[0] == transition_id, self._machine.trigger_transition_by_id, transition_id, publish)

    def trigger_transition_by_label(self, label: str, publish: bool) -> None:
        self._step(lambda t: t[1] == label, self._machine.trigger_transition_by_label, label, publish)

    def _step(self, matches, trigger, key, publish: bool) -> None:
        taken = next((t for t in self._machine.available_transitions if matches(t)), None)
        trigger(key, publish)  # raises on a transition not available here: no event then
        if publish and taken is not None:
            self._publisher.publish(transition_event(taken, self._clock.now().nanoseconds))


def transition_event(description, stamp_ns: int) -> TransitionEvent:
    """description: rcl's (transition id, label, start id, start label, goal id, goal label)."""
    transition_id, label, start_id, start_label, goal_id, goal_label = description
    return TransitionEvent(timestamp=stamp_ns, transition=Transition(id=transition_id, label=label),
                           start_state=State(id=start_id, label=start_label),
                           goal_state=State(id=goal_id, label=goal_label))


def init_lifecycle(node) -> None:
    """LifecycleNodeMixin.__init__ for `node` (an rclpy Node already initialised), with the
    interface served as the module docstring says."""
    group = MutuallyExclusiveCallbackGroup()  # a transition never waits behind another callback
    LifecycleNodeMixin.__init__(node, callback_group=group, enable_communication_interface=False)
    events = node.create_publisher(TransitionEvent, "~/transition_event", qos.LIFECYCLE_EVENTS)
    node._state_machine = EventingStateMachine(node._state_machine, events, node.get_clock())
    for srv_type, name, handler in SERVICES:
        node.create_service(srv_type, name, getattr(node, handler), qos_profile=qos.SERVICES, callback_group=group)


__all__ = ["init_lifecycle", "EventingStateMachine", "transition_event", "SERVICES"]
