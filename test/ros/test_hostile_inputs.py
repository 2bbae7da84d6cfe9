"""Property-based: the node's message decoders (RGB-D triplet, CameraInfo, TF), the request
cleaner and the model-output parser, on random input, return a value or raise ValueError,
nothing else. (Single images and clouds: test_ros_conversions.py; parser fragments:
test_reasoning.py.)"""
import math

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import Quaternion, Transform, Vector3  # noqa: E402
from hypothesis import HealthCheck, event, given, settings, strategies as st  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from gs_reasoner_ros import geometry  # noqa: E402
from gs_reasoner_ros.reasoning import parse_output  # noqa: E402
from gs_reasoner_ros.ros import conversions as cv  # noqa: E402
from gs_reasoner_ros.pipeline.queries import QueryEngine, QueryLimits, QueryOutcome, QueryRequest  # noqa: E402
from gs_reasoner_ros.pipeline.tf_tree import TfBuffer, TfError  # noqa: E402

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e308])
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


BPP = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "16UC1": 2, "32FC1": 4}


@st.composite
def images(draw, encodings, size=None):
    """Mostly well-formed images (so decoding succeeds often), each field sometimes broken."""
    w, h = size if size is not None and draw(st.booleans()) else (draw(st.integers(0, 6)), draw(st.integers(0, 5)))
    encoding = draw(st.sampled_from(encodings))
    bpp = BPP.get(encoding, 1)
    step = draw(st.sampled_from([w * bpp] * 4 + [w * bpp + 1, max(0, w * bpp - 1), 0]) | st.integers(0, 64))
    size = draw(st.sampled_from([step * h] * 4 + [step * h + 1, max(0, step * h - 2)]) | st.integers(0, 200))
    data = draw(st.binary(min_size=size, max_size=size))
    frame = draw(st.sampled_from(["cam", "cam", "", "/cam"]))
    return Image(height=h, width=w, encoding=encoding, step=step, data=data, is_bigendian=draw(st.integers(0, 1)),
                 header=cv.header(frame, draw(st.floats(0, 2e9))))


@st.composite
def camera_infos(draw, size=None):
    k = draw(st.builds(lambda f, c: [f, 0.0, c, 0.0, f, c, 0.0, 0.0, 1.0], st.floats(-10, 600) | FLOATS, FLOATS)
             | st.lists(FLOATS, min_size=9, max_size=9))
    w, h = size if size is not None and draw(st.booleans()) else (
        draw(st.integers(0, 2**32 - 1) | st.integers(0, 8)), draw(st.integers(0, 2**32 - 1) | st.integers(0, 8)))
    return CameraInfo(k=k, width=w, height=h)


@st.composite
def triplets(draw):
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 5)))
    return (draw(images(["rgb8", "bgr8", "rgba8", "16UC1", "yuv422", ""], size)),
            draw(images(["16UC1", "32FC1", "rgb8", "8UC1"], size)), draw(camera_infos(size)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(triplet=triplets())
def test_random_rgbd_triplets_decode_or_raise_value_error(triplet):
    color, depth, info = triplet
    try:
        frame = cv.decode_rgbd(color, depth, info)
    except ValueError:
        event("refused")
        return
    event("decoded")
    assert frame.rgb.shape[:2] == frame.depth.shape and frame.rgb.dtype == np.uint8
    assert np.all(np.isfinite(frame.depth)) and np.all(frame.depth >= 0)
    assert np.all(np.isfinite(frame.k)) and frame.k[0, 0] > 0 and frame.k[1, 1] > 0 and frame.frame_id


@SETTINGS
@given(info=camera_infos())
def test_random_camera_info_gives_a_usable_k_or_value_error(info):
    try:
        k = cv.camera_info_to_k(info)
    except ValueError:
        return
    assert k.shape == (3, 3) and np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0


@SETTINGS
@given(t=st.lists(FLOATS, min_size=3, max_size=3), q=st.lists(FLOATS, min_size=4, max_size=4))
def test_random_transforms_give_a_rigid_matrix_or_value_error(t, q):
    msg = Transform(translation=Vector3(x=t[0], y=t[1], z=t[2]), rotation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))
    try:
        m = cv.transform_to_matrix(msg)
    except ValueError:
        return
    assert np.all(np.isfinite(m)) and geometry.is_rigid(m, 1e-6)


@SETTINGS
@given(samples=st.lists(st.tuples(st.sampled_from(["map", "odom", "base", "cam", "", "/x"]),
                                  st.sampled_from(["odom", "base", "cam", "map", ""]),
                                  st.floats(-1e3, 1e3) | FLOATS,
                                  st.lists(FLOATS | st.floats(-10, 10), min_size=3, max_size=3),
                                  st.lists(st.floats(-1, 1), min_size=4, max_size=4), st.booleans()),
                        max_size=12),
       query=st.tuples(st.sampled_from(["map", "cam", "base", "nowhere"]), st.sampled_from(["cam", "odom", "map"]),
                       st.floats(-1e3, 1e3) | FLOATS),
       drop=st.none() | st.floats(-1e3, 1e3))
def test_random_tf_streams_store_or_refuse_and_lookups_answer_or_raise_tf_error(samples, query, drop):
    buf = TfBuffer(10.0)
    for parent, child, stamp, t, q, static in samples:
        try:
            buf.set_transform(parent, child, stamp, t, q, static=static)
        except ValueError:
            pass
    if drop is not None:
        buf.drop_after(drop)
    try:
        m = buf.lookup(*query)
    except (TfError, ValueError):
        event("no transform")
        return
    event("looked up")
    assert m.shape == (4, 4) and np.all(np.isfinite(m)) and geometry.is_rigid(m, 1e-4)


@SETTINGS
@given(question=st.text(max_size=300), options=st.lists(st.text(max_size=40), max_size=30),
       direct=st.booleans(), tokens=st.integers(0, 2**32 - 1))
def test_random_requests_become_a_clean_request_or_a_refusal(question, options, direct, tokens):
    engine = QueryEngine(reasoner=None, keyframes=None, voxel_map=None, default_limits=QueryLimits(max_question_chars=200))
    out = engine.prepare_ask(question, options, direct, tokens)
    if isinstance(out, QueryOutcome):
        assert not out.success and out.message
        return
    assert isinstance(out, QueryRequest) and out.text and out.text == out.text.strip()
    for text in [out.text, *out.options]:
        assert not any(ord(c) < 32 and c not in "\n\t" for c in text) and "\x7f" not in text
    assert len(out.text) + sum(map(len, out.options)) <= 200


MODEL_PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<bbox>", "</bbox>", "(", ")", ", ", "1e308",
                "-1e309", "nan", "0x1p3", "1_000", "sofa 2", "<|im_end|>", "<|im_start|>", "\x00", "\ud7ff", "9" * 400]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(MODEL_PIECES) | st.text(max_size=12), max_size=80))
def test_model_output_with_hostile_numbers_and_tokens_parses(parts):
    text = "".join(parts)
    think, answer, objects = parse_output(text)
    assert isinstance(think, str) and isinstance(answer, str)
    for o in objects:
        assert np.all(np.isfinite(o.box_min)) and np.all(np.isfinite(o.box_max)) and np.all(o.box_min <= o.box_max)
        assert not math.isnan(float(o.confidence))
