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
PORT_PREFIX = PREFIX + "port"  # a listening port: other participants map it too, to send into it
ORPHAN_PORT_AGE_S = 60.0  # a port file nobody maps and nobody has touched this long is dead


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


def _mapped(shm: str) -> set[str]:
    """Names under `shm` that any process we can see has mapped or open."""
    names = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as maps:
                names.update(os.path.basename(line.split()[-1]) for line in maps if shm + "/" in line)
            names.update(os.path.basename(os.readlink(f"/proc/{pid}/fd/{fd}"))
                         for fd in os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue  # gone, or not ours to read
    return names


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
    """Remove the FastDDS segments no live process uses: a participant's segment whose owner is
    dead (its lock file free) and that nobody maps, and a port nobody maps or touched lately;
    returns (files, bytes) removed."""
    try:
        names = set(os.listdir(shm))
    except OSError:
        return 0, 0
    mapped = _mapped(shm)
    stale = []
    for name in sorted(n for n in names if n.startswith(PREFIX) and not n.endswith("_el")):
        path = os.path.join(shm, name)
        if name in mapped or name + "_el" in mapped:
            continue
        if name.startswith(PORT_PREFIX):
            try:
                dead = time.time() - os.lstat(path).st_mtime > ORPHAN_PORT_AGE_S
            except OSError:
                continue
        else:
            dead = _lock_is_free(path + "_el")
        if dead:
            stale += _with_companions(shm, name)
    return _remove(stale)


def own_shm(shm: str = SHM) -> set[str]:
    """The FastDDS participant segments this process owns now (it holds their lock file); ask
    while ROS is up: shutting it down closes the lock files without unlinking the segments."""
    own = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            path = os.readlink(f"/proc/self/fd/{fd}")
            name = os.path.basename(path)
            if path.startswith(shm + "/") and name.startswith(PREFIX) and name.endswith("_el") \
                    and not name.startswith(PORT_PREFIX):
                own.add(name[:-3])
    except OSError:
        pass
    return own


def release_shm(segments, shm: str = SHM) -> tuple[int, int]:
    """Unlink `segments` (from own_shm), for a process about to end without destructors. Ports
    are never among them: other participants send through them; the next start reclaims them
    once nobody maps them."""
    return _remove(p for segment in segments for p in _with_companions(shm, segment))
