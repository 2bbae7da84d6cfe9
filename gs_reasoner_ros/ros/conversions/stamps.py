"""builtin_interfaces/Time and std_msgs/Header <-> float seconds."""
from __future__ import annotations

import math

from builtin_interfaces.msg import Time
from std_msgs.msg import Header


def stamp_to_sec(stamp) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    """float seconds -> builtin_interfaces/Time (rounded to the nanosecond). Whole seconds
    are split off first: epoch times in nanoseconds exceed float64's 53-bit precision."""
    sec = math.floor(t)
    ns = int(round((t - sec) * 1e9))
    if ns >= 1_000_000_000:
        sec, ns = sec + 1, ns - 1_000_000_000
    return Time(sec=int(sec), nanosec=ns)


def header(frame_id: str, t: float) -> Header:
    return Header(frame_id=frame_id, stamp=sec_to_stamp(t))
