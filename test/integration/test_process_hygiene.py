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


def start_node(tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gs_reasoner_ros.ros.process", "--ros-args",
                             "-p", "checkpoint:=tiny", "-p", f"export_root:={tmp_path / 'exports'}"],
                            stdout=log, stderr=subprocess.STDOUT)
    probe = Probe(name=f"hygiene_{name}", alive=lambda: proc.poll() is None)
    assert probe.spin_until(probe.services_ready, 90.0), (tmp_path / f"{name}.log").read_text()[-2000:]
    return proc, probe


@pytest.mark.skipif(not os.path.isdir(SHM), reason="no /dev/shm on this machine")
def test_clean_exits_leave_no_shared_memory_and_a_start_reclaims_a_killed_ones(tmp_path):
    dds.reclaim_stale_shm()
    before = dead_segments()
    proc, probe = start_node(tmp_path, "clean")
    probe.close()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    assert dead_segments() - before == set()  # the clean exit released its own segments

    proc, probe = start_node(tmp_path, "killed")
    probe.close()
    proc.kill()
    proc.wait(15)
    left = dead_segments() - before
    assert left, "a killed node should leave segments (or this test proves nothing)"
    proc, probe = start_node(tmp_path, "next")  # reclaims at its start
    assert not (left & dead_segments())
    probe.close()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0


def test_lifecycle_shutdown_ends_the_process_with_code_0(tmp_path):
    proc, probe = start_node(tmp_path, "lifecycle")
    try:
        client = probe.node.create_client(ChangeState, "/gs_reasoner/change_state")
        assert probe.spin_until(client.service_is_ready, 30.0)
        future = client.call_async(ChangeState.Request(transition=Transition(
            id=Transition.TRANSITION_ACTIVE_SHUTDOWN)))
        assert probe.spin_until(future.done, 30.0) and future.result().success
        t0 = time.monotonic()
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
    finally:
        probe.close()
        if proc.poll() is None:
            proc.kill()
