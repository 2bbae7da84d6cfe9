"""DDS settings the node and the demo need before rclpy creates its first participant, and the
FastDDS shared memory they leave behind.

FastDDS keeps each participant's segments as files in /dev/shm (`fastdds_<id>`, its port
`fastdds_port<N>` and the `sem.` mutex beside it) and holds an flock on `<segment>_el` while its
owner lives. They are unlinked only by destructors that never run when a process is killed, or
ends with os._exit (as reasoner_node does, see process.py), so every start first reclaims the
segments of dead owners, and a clean exit releases its own.
"""
from __future__ import annotations

import fcntl
import os
import time
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


SHM = "/dev/shm"
PREFIX = "fastdds_"
ORPHAN_PORT_AGE_S = 60.0  # a port file without its lock file, untouched this long, has no owner


def _lock_is_free(path: str) -> bool:
    """Nobody holds the flock on `path` (its owner is dead)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock if we took it


def _remove(paths) -> tuple[int, int]:
    files = size = 0
    for path in paths:
        try:
            size += os.lstat(path).st_size
            os.unlink(path)
            files += 1
        except OSError:
            pass  # gone already, or not ours to remove
    return files, size


def _with_companions(shm: str, segment: str) -> list[str]:
    return [os.path.join(shm, n) for n in (segment, segment + "_el", f"sem.{segment}_mutex")]


def reclaim_stale_shm(shm: str = SHM) -> tuple[int, int]:
    """Remove the FastDDS segments whose owners are dead (killed, or ended without destructors);
    returns (files, bytes) removed. Live participants' segments are left alone."""
    try:
        names = set(os.listdir(shm))
    except OSError:
        return 0, 0
    stale = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        path = os.path.join(shm, name)
        if name.endswith("_el"):
            if _lock_is_free(path):
                stale += _with_companions(shm, name[:-3])
        elif name.startswith(PREFIX + "port") and name + "_el" not in names:
            try:
                if time.time() - os.lstat(path).st_mtime > ORPHAN_PORT_AGE_S:
                    stale += _with_companions(shm, name)
            except OSError:
                pass
    return _remove(stale)


def release_own_shm(shm: str = SHM) -> tuple[int, int]:
    """Unlink the FastDDS segments this process owns (mapped or open by it), for a process about
    to end without destructors. Peers that still map them keep their mapping."""
    own = set()
    for source in ("/proc/self/maps", "/proc/self/fd"):
        try:
            if source.endswith("maps"):
                lines = open(source).read().splitlines()
                paths = [line.split()[-1] for line in lines if line.split()]
            else:
                paths = [os.readlink(os.path.join(source, fd)) for fd in os.listdir(source)]
        except OSError:
            continue
        for path in paths:
            name = os.path.basename(path)
            if path.startswith(shm + "/") and name.startswith(PREFIX):
                own.add(name[:-3] if name.endswith("_el") else name)
    return _remove(p for segment in own for p in _with_companions(shm, segment))
