"""Issue 19: a reasoner_node process leaves nothing behind. A lifecycle shutdown ends it with
code 0 (a supervisor restarts it); a clean exit leaves no FastDDS segment in /dev/shm; a start
after a kill reclaims what the killed process left."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402

from gs_reasoner_ros.ros import dds  # noqa: E402
from gs_reasoner_ros.ros.harness import Probe  # noqa: E402

SHM = "/dev/shm"


def dead_segments() -> set[str]:
    """FastDDS participant segments in /dev/shm whose owner is gone (nobody holds their lock file).
    Ports are shared between participants, so they are not counted here."""
    try:
        names = os.listdir(SHM)
    except OSError:
        return set()
    return {n[:-3] for n in names if n.startswith(dds.PREFIX) and n.endswith("_el")
            and not n.startswith(dds.PORT_PREFIX) and dds._lock_is_free(os.path.join(SHM, n))}


def start_node(tmp_path, name, domain=None):
    """A reasoner_node process with the tiny model, up and active. With `domain`, on a DDS domain
    of its own (no participant of this test process maps its segments), waited for by its log."""
    log_path = tmp_path / f"{name}.log"
    env = dict(os.environ, **({"ROS_DOMAIN_ID": str(domain)} if domain is not None else {}))
    proc = subprocess.Popen([sys.executable, "-m", "gs_reasoner_ros.ros.process", "--ros-args",
                             "-p", "checkpoint:=tiny", "-p", f"export_root:={tmp_path / 'exports'}"],
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90.0
    while "active: intake from" not in log_path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
        time.sleep(0.2)
    return proc


def stop(proc, sig=signal.SIGINT) -> int | None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


@pytest.mark.skipif(not os.path.isdir(SHM), reason="no /dev/shm on this machine")
def test_clean_exits_leave_no_shared_memory_and_a_start_reclaims_a_killed_ones(tmp_path):
    domain = (int(os.environ.get("ROS_DOMAIN_ID", "0")) + 110) % 232  # away from the tests' own domains
    dds.reclaim_stale_shm()
    before = dead_segments()
    procs = []
    try:
        procs.append(start_node(tmp_path, "clean", domain))
        assert stop(procs[-1]) == 0
        assert dead_segments() - before == set()  # the clean exit released its own segments
        procs.append(start_node(tmp_path, "killed", domain))
        stop(procs[-1], signal.SIGKILL)
        left = dead_segments() - before
        assert left, "a killed node should leave segments (or this test proves nothing)"
        procs.append(start_node(tmp_path, "next", domain))  # reclaims at its start
        assert not (left & dead_segments())
        assert stop(procs[-1]) == 0
    finally:
        for proc in procs:
            stop(proc, signal.SIGKILL)


def test_lifecycle_shutdown_ends_the_process_with_code_0(tmp_path):
    domain = (int(os.environ.get("ROS_DOMAIN_ID", "0")) + 111) % 232  # no other /gs_reasoner can answer
    proc = start_node(tmp_path, "lifecycle", domain)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, domain_id=domain)
    probe = Probe(ctx, name="hygiene_lifecycle")
    try:
        client = probe.node.create_client(ChangeState, "/gs_reasoner/change_state")
        assert probe.spin_until(client.service_is_ready, 30.0)
        t0 = time.monotonic()
        future = client.call_async(ChangeState.Request(transition=Transition(
            id=Transition.TRANSITION_ACTIVE_SHUTDOWN)))
        # The answer may or may not get out before the process is gone; the exit is what counts.
        assert probe.spin_until(lambda: future.done() or proc.poll() is not None, 30.0)
        assert proc.wait(30) == 0
        assert time.monotonic() - t0 < 10.0
        assert not future.done() or future.result().success
    finally:
        probe.close()
        ctx.try_shutdown()
        stop(proc, signal.SIGKILL)
