"""The ROS 2 shell of gs_reasoner_ros: only what touches rclpy or messages.

node (the reasoner_node lifecycle node: entities, callbacks, publishing, services), params
(every parameter, one table), qos, conversions/ (one module per message family), sync (the
synchronizer's subscribers), tf (the TF buffer behind one interface), diagnostics (the
/diagnostics message), dds (FastDDS profile), replay (a Scene published as a camera) and
harness (driving a node as a planner would, for the tests and tools). The work itself is done
by the ROS-free packages: gs_reasoner_ros.pipeline, scene_memory, the reasoner.
"""
