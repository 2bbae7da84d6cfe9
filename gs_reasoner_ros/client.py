"""`gs_reasoner_ros.client`: the planners' entry to a running node (ReasonerClient, GoalStream).

The code lives in gs_reasoner_ros/ros/client.py with the rest of what touches ROS; this name is
the stable one planners import.
"""
from gs_reasoner_ros.ros.client import GoalStream, ReasonerClient

__all__ = ["GoalStream", "ReasonerClient"]
