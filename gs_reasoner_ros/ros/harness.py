"""Driving a reasoner_node over ROS, as a planner and a camera would: the one harness of the
tests, the demo and the soak.

- ``Probe``: a node of its own beside a reasoner_node (in another process, or in this one):
  a camera (ScenePlayer), a client for each of the node's services, and what the node publishes
  (map clouds, markers, /diagnostics). It spins its own executor, either inside spin_until/call
  or on a background thread (``background=True``).
- ``InProcessNode``: a ReasonerNode built here (parameter overrides, an injected reasoner) with
  a Probe beside it, both spun by one multi-threaded executor on a background thread.

Both talk to the node only through its topics and services.
"""
from __future__ import annotations

import signal
import subprocess
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from gs_reasoner_ros.ros import conversions, qos
from gs_reasoner_ros.ros.node import NODE_NAME, ReasonerNode
from gs_reasoner_ros.ros.replay import ScenePlayer
from gs_reasoner_ros.ros.spinning import spin_in_background, spin_once
from gs_reasoner_ros.srv import AskSpatialQuestion, ExportScene, GroundObjects

SERVICES = (("ask", AskSpatialQuestion), ("ground", GroundObjects), ("clear", Trigger),
            ("export_scene", ExportScene))


def stop_process(proc, timeout_s: float = 10.0) -> int | None:
    """SIGINT a node or tool process and wait for it; SIGKILL it if it does not end in time.
    Returns its exit code (None when it had to be killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def wait_until(predicate, timeout: float, step: float = 0.02) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def service_clients(node, namespace: str = "/" + NODE_NAME) -> dict:
    """A client per service of the node under `namespace`, by short name."""
    return {name: node.create_client(srv, f"{namespace}/{name}", qos_profile=qos.SERVICES) for name, srv in SERVICES}


class Probe:
    """A client node on `ctx` (a fresh context when None) beside the node named `target` (fully
    qualified, e.g. /robot1/gs_reasoner); the probe lives in the target's namespace, so its
    camera (ScenePlayer) publishes the topics that node reads.

    `alive()` (e.g. a node process's poll() is None) ends every wait early when it turns false.
    With `executor` given (one that also spins the target), the probe only adds its node to it."""

    def __init__(self, ctx=None, name: str = "probe", target: str = "/" + NODE_NAME, background: bool = False,
                 alive=None, executor=None):
        self._own_context = ctx is None
        if ctx is None:
            ctx = rclpy.context.Context()
            rclpy.init(context=ctx)
        self.ctx, self.target, self.alive = ctx, target, alive or (lambda: True)
        self.node = rclpy.create_node(name, context=ctx, namespace=target.rsplit("/", 1)[0] or "/")
        self.clients = service_clients(self.node, target)
        self.player = ScenePlayer(self.node)
        self.clouds: list = []
        self.markers: list = []
        self.diag_msg = None
        self._lock = threading.Lock()
        self.node.create_subscription(PointCloud2, f"{target}/map_cloud", self.clouds.append, qos.LATCHED)
        self.node.create_subscription(MarkerArray, f"{target}/markers", self.markers.append, qos.LATCHED)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self._own_executor = executor is None
        self.executor = executor or SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)
        self._thread = None
        if background and self._own_executor:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        self._background = background or not self._own_executor

    # ---- spinning -----------------------------------------------------------------

    def _spin(self) -> None:
        spin_in_background(self.executor, self.ctx, lambda: self._thread is not None)

    def spin_until(self, predicate, timeout: float = 15.0) -> bool:
        """Wait until `predicate` holds (True), or timeout / the target died (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or not self.alive():
                return False
            if self._background:
                time.sleep(0.02)
            else:
                spin_once(self.executor, 0.05)
        return True

    # ---- services -----------------------------------------------------------------

    def services_ready(self) -> bool:
        return all(c.service_is_ready() for c in self.clients.values())

    def call_async(self, service: str, **fields):
        client = self.clients[service]
        return client.call_async(client.srv_type.Request(**fields))

    def call(self, service: str, timeout: float = 60.0, **fields):
        """The response of `service` (ask, ground, clear, export_scene) to a request with
        `fields`; TimeoutError when the service never appears or never answers."""
        client = self.clients[service]
        if not self.spin_until(client.service_is_ready, min(timeout, 30.0)):
            raise TimeoutError(f"~/{service}: the service never appeared")
        future = client.call_async(client.srv_type.Request(**fields))
        if not self.spin_until(future.done, timeout):
            raise TimeoutError(f"~/{service} did not answer within {timeout:g} s")
        return future.result()

    # ---- what the node publishes --------------------------------------------------

    def _on_diag(self, msg: DiagnosticArray) -> None:
        if any(s.name.startswith(self.target.lstrip("/") + ":") for s in msg.status):
            with self._lock:
                self.diag_msg = msg

    def diag(self) -> dict:
        """The target's last /diagnostics: {status name suffix: {key: value}}."""
        with self._lock:
            msg = self.diag_msg
        return {} if msg is None else {s.name.split(": ")[-1]: {kv.key: kv.value for kv in s.values}
                                       for s in msg.status}

    def diag_value(self, key: str, default: float = 0.0) -> float:
        """One figure of the target's last /diagnostics, as a number."""
        for values in self.diag().values():
            if key in values:
                try:
                    return float(values[key])
                except ValueError:
                    return default
        return default

    def cloud_at(self, stamp: float, timeout: float = 20.0):
        """The newest map cloud once it includes the frame stamped `stamp`, else None."""
        ok = self.spin_until(lambda: self.clouds and abs(
            conversions.stamp_to_sec(self.clouds[-1].header.stamp) - stamp) < 1e-6, timeout)
        return self.clouds[-1] if ok else None

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(2.0)
        if self._own_executor:
            self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self._own_context:
            self.ctx.try_shutdown()


class InProcessNode:
    """A ReasonerNode (active unless `expect_active` is False) in `namespace` with `overrides`
    (parameter name -> value) and the reasoner `reasoner_factory(params)` makes, and a Probe
    ("probe") beside it; all spun on a background thread. `ctx`: share a context (several nodes)."""

    def __init__(self, overrides: dict, reasoner_factory, namespace: str = "/", ctx=None, expect_active=True):
        self._own_context = ctx is None
        self.ctx = ctx or rclpy.context.Context()
        if self._own_context:
            rclpy.init(context=self.ctx)
        self.node = ReasonerNode(context=self.ctx, reasoner_factory=reasoner_factory, namespace=namespace,
                                 parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        assert (self.node.state == "active") == expect_active, self.node.health.snapshot()
        self.executor = MultiThreadedExecutor(num_threads=self.node.executor_threads() + 2, context=self.ctx)
        self.executor.add_node(self.node)
        self.probe = Probe(self.ctx, executor=self.executor, target=self.node.get_fully_qualified_name())
        self.client, self.clients, self.player = self.probe.node, self.probe.clients, self.probe.player
        self._stop_spin = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        spin_in_background(self.executor, self.ctx, lambda: not self._stop_spin)

    @staticmethod
    def wait_for(predicate, timeout: float = 10.0) -> bool:
        return wait_until(predicate, timeout)

    def call(self, service: str, timeout: float = 30.0, **fields):
        """The response of `service` to a request with `fields` (the executor thread spins)."""
        return self.probe.call(service, timeout, **fields)

    def close(self) -> None:
        self.node.stop()
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.probe.close()
        if self._own_context:
            self.ctx.try_shutdown()
        self._stop_spin = True
        self.thread.join(2.0)
