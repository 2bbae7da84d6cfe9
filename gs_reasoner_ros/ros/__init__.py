"""The ROS 2 shell of gs_reasoner_ros: the reasoner_node lifecycle node and its parts.

Only this package imports rclpy. Each module does one job: params (every parameter),
qos, conversions (messages <-> numpy), sync (approximate-time synchronizer), tf_buffer,
markers, diagnostics, query_worker (the model's thread), queries (ROS-free query logic),
dds (FastDDS profile), replay (publishing a Scene as camera topics) and node.
"""
