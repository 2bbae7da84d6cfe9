"""Shared fixtures. ROS isolation is set before anything imports rclpy."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    # One DDS domain per pytest process (and xdist worker) so parallel runs never meet.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    os.environ.setdefault("ROS_DOMAIN_ID", str(10 + (os.getpid() + int(worker[2:] or 0)) % 90))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOG_DIR", str(Path(config.rootpath) / "build" / "ros_log"))
    # Every test process (and the nodes it starts) uses the shipped FastDDS profile, as the node
    # and the demo do, so 640x480 images are not dropped by the default shared-memory segment.
    from gs_reasoner_ros.ros import dds

    dds.use_bundled_fastdds_profile()
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
