"""The live pipeline, ROS-free: what happens between a camera message and an answer.

intake (synced frames -> posed frames -> map and keyframes, on its own thread; relocalisation
and new timelines), timeline (stamps that go back), motion (pose jumps and prediction), tf_tree
(the transform tree over time), sync_matcher (approximate-time pairing), images (raw payload
decoding), queries (request validation with the limits it carries, alignment, boxes back to
the world frame), query_worker (the model's thread), frame_preparer (keyframe preprocessing as
keyframes arrive), export (~/export_scene's folder rules), health (figures and fault reports).
gs_reasoner_ros.ros converts messages and hands them to these.
"""
