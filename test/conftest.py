"""Shared fixtures. ROS isolation is set before anything imports rclpy."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


_DOMAIN_LOCK = None  # held open for the whole session: the claim on the domain id


def _claim_domain_id() -> int:
    """The first DDS domain id (10-100) no other test process on this host holds, claimed with
    an exclusive lock on a file in the temp folder (released when the process ends, even if it
    is killed). A pid-derived id collided for about one pair of concurrent runs in ninety."""
    import fcntl
    import tempfile

    global _DOMAIN_LOCK
    for domain in range(10, 101):
        lock = open(Path(tempfile.gettempdir()) / f"gs_reasoner_ros_test_domain_{domain}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        _DOMAIN_LOCK = lock
        return domain
    raise RuntimeError("every DDS domain id from 10 to 100 is held by another test run on this host")


def pytest_configure(config):
    # One DDS domain per pytest process on this host, so parallel runs never meet.
    if "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(_claim_domain_id())
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOG_DIR", str(Path(config.rootpath) / "build" / "ros_log"))
    # Every test process (and the nodes it starts) uses the shipped FastDDS profile, as the node
    # and the demo do, so 640x480 images are not dropped by the default shared-memory segment.
    from gs_reasoner_ros.ros import dds

    dds.use_bundled_fastdds_profile()
    dds.reclaim_stale_shm()  # segments that earlier killed runs left in /dev/shm
    # Without a GPU the Triton kernels run in Triton's interpreter (numpy), so their logic is
    # tested here too; the variable is read when a kernel is defined, so it is set before any
    # test module imports one.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (the shared data folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def rgbd_3dmatch(shared_data) -> Path:
    path = shared_data / "rgbd_3dmatch"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
