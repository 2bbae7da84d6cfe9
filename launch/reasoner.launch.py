"""Launch reasoner_node on a ROS 2 install (Jazzy/Kilted):

  ros2 launch gs_reasoner_ros reasoner.launch.py checkpoint:=/models/GS-Reasoner device:=cuda \
      namespace:=robot1 world_frame:=map use_sim_time:=false rviz:=true

rviz:=true also starts RViz 2 with config/gs_reasoner.rviz (map cloud, answer boxes, detections,
TF); its topics are under /gs_reasoner, so with a namespace pass rviz_config:= a copy that says so.

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
    share = get_package_share_directory("gs_reasoner_ros")
    default_params = os.path.join(share, "config", "reasoner.yaml")
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
        DeclareLaunchArgument("rviz", default_value="false",
                              description="true: also start RViz 2 with rviz_config (needs rviz2 installed)"),
        DeclareLaunchArgument("rviz_config", default_value=os.path.join(share, "config", "gs_reasoner.rviz"),
                              description="RViz 2 configuration for rviz:=true"),
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
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2", output="log",
                arguments=["-d", LaunchConfiguration("rviz_config")],
                parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
                condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription(args + [plain, managed, rviz])
