"""Launch reasoner_node on a ROS 2 install (Jazzy/Kilted):

  ros2 launch gs_reasoner_ros reasoner.launch.py checkpoint:=/models/GS-Reasoner device:=cuda \
      namespace:=robot1 world_frame:=map use_sim_time:=false

Remap the camera with the usual arguments of your driver's namespace, e.g. put the node in the
camera's namespace so that color/image, depth/image and color/camera_info resolve to it.
Without launch (the PyPI-wheel environment): reasoner_node --ros-args --params-file config/reasoner.yaml
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("gs_reasoner_ros"), "config", "reasoner.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML with /**/gs_reasoner: ros__parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("world_frame", default_value="map", description="fixed frame for maps and boxes"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="GS-Reasoner folder; empty runs a tiny UNTRAINED model"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu, cuda or cuda:N"),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="true: start unconfigured for a lifecycle manager (autostart off)"),
    ]
    overrides = {
        "world_frame": LaunchConfiguration("world_frame"),
        "checkpoint": LaunchConfiguration("checkpoint"),
        "device": LaunchConfiguration("device"),
        "use_sim_time": LaunchConfiguration("use_sim_time"),
    }
    common = dict(package="gs_reasoner_ros", executable="reasoner_node", name="gs_reasoner",
                  namespace=LaunchConfiguration("namespace"), output="screen",
                  arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")])
    # A plain node configures and activates itself (autostart); a managed one waits for a manager.
    plain = Node(parameters=[LaunchConfiguration("params_file"), overrides],
                 condition=UnlessCondition(LaunchConfiguration("lifecycle")), **common)
    managed = LifecycleNode(parameters=[LaunchConfiguration("params_file"), dict(overrides, autostart=False)],
                            condition=IfCondition(LaunchConfiguration("lifecycle")), **common)
    return LaunchDescription(args + [plain, managed])
