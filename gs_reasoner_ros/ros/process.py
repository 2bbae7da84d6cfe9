"""The reasoner_node process: ROS up, the node spun until SIGINT/SIGTERM, a clean and bounded
exit (`reasoner_node` and `python -m gs_reasoner_ros.ros.process`)."""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import NoReturn

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from gs_reasoner_ros.ros import dds
from gs_reasoner_ros.ros.node import ReasonerNode
from gs_reasoner_ros.ros.spinning import spin_once


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(argv=None, reasoner_factory=None) -> NoReturn:
    """Run the node until SIGINT/SIGTERM, then end the process with the exit status (never returns)."""
    argv = sys.argv if argv is None else argv
    dds.use_bundled_fastdds_profile()
    dds.reclaim_stale_shm()  # what killed processes left in /dev/shm
    # rclpy handles SIGINT only: its SIGTERM handling is racy (hangs, RCLError); ours raises
    # KeyboardInterrupt in the main thread, which the bounded spin loop below turns into an exit.
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.SIGINT)
    except Exception as err:  # noqa: BLE001 (rcl's parser reports malformed --ros-args this way)
        print(f"reasoner_node: cannot start ROS: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    node, executor, status = None, None, 0
    try:
        node = ReasonerNode(reasoner_factory=reasoner_factory)
        if node.p.autostart and node.state != "active":
            node.get_logger().error("autostart failed (see above); staying up unconfigured, saying why on "
                                    "/diagnostics and in every service answer: fix the cause and configure "
                                    "again (lifecycle ~/change_state) or restart")
        executor = MultiThreadedExecutor(num_threads=node.executor_threads())
        executor.add_node(node)
        while rclpy.ok() and not node.exit_requested:
            spin_once(executor, 0.2)
        if node.exit_requested:
            node.get_logger().info("lifecycle shutdown: the process ends (exit code 0)")
            deadline = time.monotonic() + 0.5  # the transition's answer is still on its way out
            while rclpy.ok() and time.monotonic() < deadline:
                spin_once(executor, 0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, ParameterException) as err:  # bad parameters from the command line or a file
        print(f"reasoner_node: bad parameter: {err}", file=sys.stderr)
        status = 2
    finally:
        segments = dds.own_shm()  # before shutdown closes their lock files
        if node is not None:
            node.stop()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        dds.release_shm(segments)  # os._exit below skips the destructors that would unlink them
        # Leave without interpreter teardown: with a model call still running on the worker
        # thread it can hang, and even when idle, finalising modules under rclpy's and torch's
        # background threads crashed (SIGSEGV) about once in ten clean SIGINT exits here.
        # Everything ROS is closed by now; only the buffered output is left to write.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
