"""Keyframes of several cameras: each camera is judged against its own last keyframe, and a
scene mixes cameras of different image sizes (same aspect ratio) by resampling."""
import numpy as np

from gs_reasoner_ros.scene_memory import Frame, KeyframeStore
from gs_reasoner_ros.synthetic import default_intrinsics


def frame(camera, x, stamp, size=(48, 64)):
    h, w = size
    pose = np.eye(4)
    pose[0, 3] = x
    return Frame(np.full((h, w, 3), 100, np.uint8), np.full((h, w), 2.0, np.float32), default_intrinsics(w, h),
                 pose, stamp, camera=camera)


def test_each_camera_is_judged_against_its_own_last_keyframe():
    store = KeyframeStore(min_translation=0.2, min_interval_s=0.0, max_interval_s=100.0)
    # two cameras 3 m apart, both still: alternating frames must not look like 3 m of motion
    kept = [store.offer(frame(cam, x, 0.1 * i + (0.01 if cam == "wrist" else 0.0)))
            for i in range(5) for cam, x in (("head", 0.0), ("wrist", 3.0))]
    assert kept[:2] == [True, True] and not any(kept[2:])
    # a wrist frame slightly older than the newest head keyframe is still the wrist's to judge
    assert store.offer(frame("wrist", 3.5, 0.405))
    assert store.newest_stamp == 0.405
    assert [f.camera for f in store.frames()] == ["head", "wrist", "wrist"]


def test_scenes_resample_other_image_sizes_and_keep_camera_geometry():
    store = KeyframeStore(min_interval_s=0.0)
    store.offer(frame("wrist", 0.0, 0.0, size=(96, 128)))
    store.offer(frame("head", 1.0, 0.1, size=(48, 64)))
    store.offer(frame("odd", 2.0, 0.2, size=(48, 48)))  # another aspect ratio: left out
    store.offer(frame("head", 3.0, 0.3, size=(48, 64)))
    scene = store.to_scene(8)
    assert len(scene) == 3 and scene.rgb.shape[1:3] == (48, 64)
    np.testing.assert_allclose(scene.intrinsics[0], default_intrinsics(64, 48))  # K follows the resampling
    assert np.all(scene.depth[0] == 2.0)
