"""Python side of gs_reasoner_ros.

On a ROS 2 install, colcon builds the package through CMakeLists.txt (ament_cmake), which
generates the interfaces and installs this Python package beside them. In the PyPI-wheel
environment, install.sh builds only the interfaces in place and then installs this file
with `pip install -e .`, so the console scripts exist and edits take effect at once.
"""
from setuptools import find_packages, setup

setup(
    name="gs_reasoner_ros",
    version="0.1.0",
    description="ROS 2 spatial reasoning node around the GS-Reasoner 3D-LLM",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["gs_reasoner_ros", "gs_reasoner_ros.*"]),
    package_data={"gs_reasoner_ros": ["*.json", "config/*.yaml", "config/*.xml", "models/demo/*"]},
    entry_points={
        "console_scripts": [
            "reasoner_node = gs_reasoner_ros.ros.process:main",
            "gs-reasoner = gs_reasoner_ros.tools.cli:main",
        ]
    },
)
