"""DDS settings the node and the demo need before rclpy creates its first participant."""
from __future__ import annotations

import os
from importlib import resources

from rclpy.utilities import get_rmw_implementation_identifier

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"


def bundled_profile() -> str:
    """Path of the shipped FastDDS profile (64 MB shared-memory segment + UDPv4)."""
    return str(resources.files("gs_reasoner_ros") / "config" / "fastdds_profile.xml")


def uses_fastdds() -> bool:
    """The RMW this process will use is FastDDS (the only one that reads the profile)."""
    return get_rmw_implementation_identifier().startswith("rmw_fastrtps")


def use_bundled_fastdds_profile(env: dict | None = None) -> str | None:
    """Point FastDDS at the bundled profile unless the user chose one; returns the path set.
    Must run before rclpy.init (FastDDS reads the variable once, at the first participant)."""
    env = os.environ if env is None else env
    if env.get(PROFILE_ENV) or not uses_fastdds():
        return None
    env[PROFILE_ENV] = bundled_profile()
    return env[PROFILE_ENV]
