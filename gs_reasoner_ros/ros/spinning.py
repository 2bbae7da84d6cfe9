"""Spinning that outlives rclpy's race with a lifecycle transition.

A transition creates and destroys the camera subscriptions (activate, deactivate) on an executor
thread while another thread builds the wait set; rclpy's spin_once then raises InvalidHandle for
an entity destroyed under it. Left uncaught, that ended the node's spinning: with 40 concurrent
change_state calls the node answered nothing more. The next spin_once builds a fresh wait set
without the destroyed entity, so the error is only skipped.
"""
from __future__ import annotations

import traceback

from rclpy.exceptions import InvalidHandle


def spin_once(executor, timeout_sec: float) -> bool:
    """executor.spin_once; False when an entity was destroyed while the wait set was built."""
    try:
        executor.spin_once(timeout_sec=timeout_sec)
    except InvalidHandle:
        return False
    return True


def spin_in_background(executor, ctx, running) -> None:
    """spin_once until running() turns false or the context is shut down, for a spinning thread.
    An error raised in spin_once is printed and spinning goes on: code that creates entities on a
    node being spun races with rclpy (it lists an ActionClient on its node before the client is
    built), and a dead spinning thread would turn that into silence."""
    while running() and ctx.ok():
        try:
            spin_once(executor, 0.05)
        except Exception:  # noqa: BLE001
            if ctx.ok():
                traceback.print_exc()


__all__ = ["spin_once", "spin_in_background"]
