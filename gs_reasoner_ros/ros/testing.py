"""Driving a reasoner_node over ROS from tests and tools.

- ``Probe``: a node of its own with a client for each of the node's services, spun by its own
  executor while it waits (for a node in another process, or spun elsewhere);
- ``InProcessNode``: a ReasonerNode built here (parameter overrides, an injected reasoner)
  with a probe node beside it, both spun by one multi-threaded executor on a thread.

Both talk to the node only through its topics and services, as a planner would.
"""
from __future__ import annotations

import threading
import time

import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from gs_reasoner_ros.ros import qos
from gs_reasoner_ros.ros.node import ReasonerNode
from gs_reasoner_ros.ros.replay import ScenePlayer
from gs_reasoner_ros.srv import AskSpatialQuestion, ExportScene, GroundObjects

SERVICES = (("ask", AskSpatialQuestion), ("ground", GroundObjects), ("clear", Trigger),
            ("export_scene", ExportScene))


def wait_until(predicate, timeout: float, step: float = 0.02) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def service_clients(node, namespace: str = "/gs_reasoner") -> dict:
    """A client per service of the node under `namespace`, by short name."""
    return {name: node.create_client(srv, f"{namespace}/{name}", qos_profile=qos.SERVICES) for name, srv in SERVICES}


class Probe:
    """A node on `ctx` (a fresh context when None) with the service clients; it spins only
    inside spin_until/call."""

    def __init__(self, ctx=None, name: str = "probe"):
        self._own_context = ctx is None
        if ctx is None:
            ctx = rclpy.context.Context()
            rclpy.init(context=ctx)
        self.ctx = ctx
        self.node = rclpy.create_node(name, context=ctx)
        self.clients = service_clients(self.node)
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)

    def spin_until(self, predicate, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            self.executor.spin_once(timeout_sec=0.05)
        return True

    def call(self, service: str, timeout: float = 60.0, **fields):
        """The response of `service` (ask, ground, clear, export_scene) to a request with `fields`."""
        client = self.clients[service]
        assert self.spin_until(client.service_is_ready, 30.0), f"{service}: service never appeared"
        future = client.call_async(client.srv_type.Request(**fields))
        assert self.spin_until(future.done, timeout), f"{service}: no response"
        return future.result()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self._own_context:
            self.ctx.try_shutdown()


class InProcessNode:
    """A ReasonerNode (active) with `overrides` (parameter name -> value) and the reasoner
    `reasoner_factory(params)` makes, and a probe node ("probe") with the service clients and a
    ScenePlayer; both spun on a background thread."""

    def __init__(self, overrides: dict, reasoner_factory):
        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx)
        self.node = ReasonerNode(context=self.ctx, reasoner_factory=reasoner_factory,
                                 parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        assert self.node.state == "active", self.node.health.snapshot()
        self.client = rclpy.create_node("probe", context=self.ctx)
        self.executor = MultiThreadedExecutor(num_threads=self.node.executor_threads() + 2, context=self.ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.clients = service_clients(self.client)
        self.player = ScenePlayer(self.client)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while self.ctx.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 (context shut down while spinning)
                break

    @staticmethod
    def wait_for(predicate, timeout: float = 10.0) -> bool:
        return wait_until(predicate, timeout)

    def call(self, service: str, timeout: float = 30.0, **fields):
        """The response of `service` to a request with `fields` (the executor thread spins)."""
        client = self.clients[service]
        assert client.wait_for_service(timeout_sec=10.0), f"{service}: service never appeared"
        future = client.call_async(client.srv_type.Request(**fields))
        assert wait_until(future.done, timeout), f"{service} did not answer"
        return future.result()

    def close(self) -> None:
        self.node.stop()
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.client.destroy_node()
        self.ctx.try_shutdown()
        self.thread.join(2.0)
