"""The ROS-free service logic: validation, alignment round trip, failures, exports, the worker."""
import os
import re
import threading
import time

import numpy as np
import pytest

from gs_reasoner_ros import geometry
from gs_reasoner_ros.reasoning import Answer, GroundedBox
from gs_reasoner_ros.pipeline.export import ExportBudget, export_scene, export_target, usage
from gs_reasoner_ros.pipeline.queries import (UNTRAINED_NOTE, QueryEngine, QueryLimits,
                                         token_budget)
from gs_reasoner_ros.pipeline.query_worker import QueryWorker, Refused
from gs_reasoner_ros.scene import Scene
from gs_reasoner_ros.scene_memory import Frame, KeyframeStore, VoxelMap
from gs_reasoner_ros.synthetic import synthetic_scene


class BoxOracle:
    """A fake reasoner that 'finds' the true objects: it maps their world boxes into the model
    frame it is given (scene.axis_align) and answers with their axis-aligned bounds there."""

    untrained = False

    def __init__(self, room, fail: Exception | None = None):
        self.room, self.fail, self.calls = room, fail, []

    def answer(self, scene, question, options=(), task="spatial", max_new_tokens=None):
        self.calls.append(dict(question=question, options=options, task=task, max_new_tokens=max_new_tokens,
                               frames=len(scene), A=scene.axis_align.copy()))
        if self.fail:
            raise self.fail
        boxes = []
        for label, center, quat, size in self.room.world_boxes():
            corners = geometry.transform_points(scene.axis_align, geometry.box_corners(center, quat, size))
            boxes.append(GroundedBox(label, corners.min(0), corners.max(0), 0.9))
        return Answer(answer="ok", text="<answer>ok</answer>", objects=boxes, keyframes_used=len(scene))


@pytest.fixture(scope="module")
def rotated_room():
    """A room turned 30 degrees in the world, fused into real scene memory."""
    scene, room = synthetic_scene(seed=3, n_frames=10, width=160, height=120, yaw_deg=30.0, period_s=1.0)
    vmap, store = VoxelMap(0.05), KeyframeStore(max_keyframes=50, min_interval_s=0.0)
    for i in range(len(scene)):
        f = Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], float(scene.stamps[i]))
        vmap.integrate_frame(f)
        store.offer(f)
    return room, vmap, store


def engine(room_fixture, reasoner=None, **limits):
    room, vmap, store = room_fixture
    return QueryEngine(reasoner or BoxOracle(room), store, vmap, QueryLimits(**limits))


def test_boxes_come_back_in_the_world_frame_through_the_wall_alignment(rotated_room):
    room = rotated_room[0]
    e = engine(rotated_room, num_frames=4)
    out = e.ground("the sofa")
    assert out.success, out.message
    A = e.reasoner.calls[0]["A"]
    # the model frame really was rotated: the room's 30 degree walls are axis-aligned there
    yaw = np.degrees(np.arctan2(A[1, 0], A[0, 0]))
    assert min(abs((yaw + 30 + 45) % 90 - 45), 90) < 2.0
    assert e.reasoner.calls[0]["frames"] == 4 and out.keyframes_used == 4
    for obj, (label, center, quat, size) in zip(out.objects, room.world_boxes()):
        got = geometry.box_corners(obj.center, obj.quat, obj.size)
        want = geometry.box_corners(center, quat, size)
        d = np.linalg.norm(got[:, None] - want[None], axis=2)
        assert d.min(axis=1).max() < 0.1, label  # corners within alignment error (< 2 deg)
        np.testing.assert_allclose(obj.center, center, atol=1e-6)
    assert out.stamp == 9.0  # the newest keyframe in the scene given to the model


def test_a_world_that_is_not_z_up_is_reported(rotated_room):
    room, vmap, store = rotated_room
    y_up = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # z-up -> y-up world
    tilted = KeyframeStore(min_interval_s=0.0)
    for f in store.frames():
        tilted.offer(Frame(f.rgb, f.depth, f.K, y_up @ f.pose, f.stamp))
    e = QueryEngine(BoxOracle(room), tilted, vmap, QueryLimits(align_to_walls=False))
    out = e.ground("the sofa")
    assert out.success and re.search(r"does not look z-up \(the cameras' up is (8\d|9\d) deg", out.message)
    assert "z-up" not in engine(rotated_room).ground("the sofa").message


def test_alignment_can_be_switched_off(rotated_room):
    e = engine(rotated_room, align_to_walls=False)
    assert e.ground("a chair").success
    np.testing.assert_array_equal(e.reasoner.calls[0]["A"], np.eye(4))


def test_alignment_is_kept_while_the_keyframes_stay_and_follows_a_new_one():
    """The map grows between questions; re-estimating the alignment from it each time would
    change the scene the model sees (and miss its caches) although no keyframe changed."""
    scene, room = synthetic_scene(seed=3, n_frames=10, width=160, height=120, yaw_deg=30.0, period_s=1.0)
    vmap, store = VoxelMap(0.05), KeyframeStore(max_keyframes=50, min_interval_s=0.0)
    frames = [Frame(scene.rgb[i], scene.depth[i], scene.intrinsics[i], scene.poses[i], float(scene.stamps[i]))
              for i in range(len(scene))]
    for f in frames[:6]:
        vmap.integrate_frame(f)
        store.offer(f)
    e = QueryEngine(BoxOracle(room), store, vmap, QueryLimits())
    first = e.alignment()
    for f in frames[6:]:  # the camera streams on: the map changes, the keyframes do not
        vmap.integrate_frame(f)
    assert not np.array_equal(geometry.estimate_alignment(vmap.points()), first)  # the test can fail
    assert e.alignment() is first
    assert store.offer(frames[6])  # a new keyframe: estimated again from today's map
    np.testing.assert_array_equal(e.alignment(), geometry.estimate_alignment(vmap.points()))


def test_tasks_and_token_budgets(rotated_room):
    e = engine(rotated_room, default_max_new_tokens=0, max_new_tokens_limit=300)
    e.ask("how far is the sofa from the tv?", max_new_tokens=0)
    e.ask("is the door on my left?", direct=True, max_new_tokens=50)
    e.ask("which is closer?", options=["A. sofa", "B. tv"], max_new_tokens=4_000_000_000)
    e.ground("the tv", max_new_tokens=7)
    calls = e.reasoner.calls
    assert [c["task"] for c in calls] == ["spatial", "qa", "spatial", "ground"]
    assert [c["max_new_tokens"] for c in calls] == [None, 50, 300, 7]
    assert calls[2]["options"] == ("A. sofa", "B. tv")


def test_clamping_is_reported():
    budget, note = token_budget(4_000_000_000, QueryLimits(max_new_tokens_limit=2048))
    assert budget == 2048 and "clamped to 2048" in note
    assert token_budget(0, QueryLimits(default_max_new_tokens=100)) == (100, "")


@pytest.mark.parametrize("question, options, direct, error", [
    ("", [], False, "question is empty"),
    ("  \n\t ", [], False, "question is empty"),
    ("x" * 10_000, [], False, "10000 characters; the limit is 2000"),
    ("ok?", ["x" * 1500, "y" * 1500], False, "question and options have"),
    ("ok?", [""], False, "option 1 is empty"),
    ("ok?", ["a"] * 27, False, "at most 26"),
])
def test_bad_requests_are_refused_before_the_model(rotated_room, question, options, direct, error):
    e = engine(rotated_room)
    out = e.ask(question, options, direct)
    assert not out.success and error in out.message
    assert e.reasoner.calls == []


def test_control_characters_are_removed(rotated_room):
    e = engine(rotated_room)
    e.ask("where\x00 is the\x1b[31m sofa?\u202e\n")
    assert e.reasoner.calls[0]["question"] == "where is the[31m sofa?"


def test_empty_memory_is_a_clear_failure(rotated_room):
    room = rotated_room[0]
    e = QueryEngine(BoxOracle(room), KeyframeStore(), VoxelMap(), QueryLimits())
    out = e.ground("the sofa")
    assert not out.success and "no keyframes yet" in out.message


def test_model_failure_is_reported_and_the_next_query_works(rotated_room):
    room = rotated_room[0]
    oracle = BoxOracle(room, fail=RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    e = engine(rotated_room, reasoner=oracle)
    out = e.ground("the sofa")
    assert not out.success and "model failed: RuntimeError: CUDA out of memory" in out.message
    oracle.fail = None
    assert e.ground("the sofa").success


def test_untrained_model_says_so_in_every_message(rotated_room):
    oracle = BoxOracle(rotated_room[0])
    oracle.untrained = True
    e = engine(rotated_room, reasoner=oracle)
    assert UNTRAINED_NOTE in e.ground("sofa").message
    assert UNTRAINED_NOTE in e.ask("").message or not e.ask("").success
    assert UNTRAINED_NOTE in e.ask("how big is the room?", max_new_tokens=99999).message


# ---- exports -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/tmp/x", ".hidden", "a" * 129, "a b", "x\x00",
                                  "room\n"])
def test_export_refuses_names_that_are_not_plain_folders(tmp_path, name):
    with pytest.raises(ValueError):
        export_target(tmp_path / "root", name)


def test_export_refuses_symlinks_out_of_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "escape")
    with pytest.raises(ValueError, match="already exists"):
        export_target(root, "escape")
    assert export_target(root, "kitchen-1") == (root / "kitchen-1").resolve()


def test_export_writes_a_loadable_processed_scene(tmp_path, rotated_room):
    _, vmap, store = rotated_room
    A = geometry.rotation_z(0.3)
    path = export_scene(store, tmp_path / "exports", "room_a", A)
    assert path.parent == (tmp_path / "exports").resolve()
    back = Scene.load_processed(path)
    assert len(back) == len(store)
    np.testing.assert_allclose(back.poses, np.stack([f.pose for f in store.frames()]), atol=1e-9)
    np.testing.assert_allclose(back.axis_align, A, atol=1e-12)
    with pytest.raises(ValueError, match="already exists"):
        export_scene(store, tmp_path / "exports", "room_a")
    with pytest.raises(ValueError, match="no keyframes"):
        export_scene(KeyframeStore(), tmp_path / "exports", "empty")


def test_exports_stay_within_their_budget(tmp_path, rotated_room):
    _, _, store = rotated_room
    root = tmp_path / "exports"
    first = export_scene(store, root, "a", budget=ExportBudget(max_count=2))
    size = usage(root)[1]
    export_scene(store, root, "b", budget=ExportBudget(max_count=2))
    with pytest.raises(ValueError, match="budget is 2 exports"):
        export_scene(store, root, "c", budget=ExportBudget(max_count=2))
    with pytest.raises(ValueError, match="over export_budget_mb"):  # would not fit: nothing is left behind
        export_scene(store, root, "d", budget=ExportBudget(max_bytes=int(2.5 * size)))
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"] and first.is_dir()


# ---- the worker -----------------------------------------------------------------------

def _slow(seconds, log, tag):
    log.append(("start", tag))
    time.sleep(seconds)
    log.append(("end", tag))
    return tag


def test_worker_runs_one_at_a_time_queues_one_and_refuses_the_rest():
    w = QueryWorker(max_waiting=1, wait_timeout_s=5.0)
    log, results = [], {}

    def call(tag):
        try:
            results[tag] = w.run(_slow, 0.3, log, tag)
        except Refused as err:
            results[tag] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    w.stop()
    ran = [r for r in results.values() if not isinstance(r, Refused)]
    refused = [r for r in results.values() if isinstance(r, Refused)]
    assert sorted(ran) == [0, 1] and len(refused) == 2 and "busy" in str(refused[0])
    assert log == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]  # never overlapping


def test_worker_wait_timeout_and_errors():
    w = QueryWorker(max_waiting=1, wait_timeout_s=0.1)
    t = threading.Thread(target=w.run, args=(time.sleep, 0.5))
    t.start()
    time.sleep(0.05)
    with pytest.raises(Refused, match="waited 0.1 s"):
        w.run(lambda: "never")
    t.join()
    with pytest.raises(ZeroDivisionError):
        w.run(lambda: 1 / 0)
    assert w.run(lambda: "next works") == "next works"
    w.stop()


def test_stop_releases_callers_while_the_model_still_runs():
    w = QueryWorker(max_waiting=2)
    errors = []

    def call():
        try:
            w.run(time.sleep, 2.0)
        except Refused as err:
            errors.append(str(err))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    assert not w.stop(timeout_s=0.0)  # the sleeping "model" is still running
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 0.5
    assert errors == ["the node is shutting down"] * 2
    with pytest.raises(Refused, match="shutting down"):
        w.run(lambda: 0)


def test_direct_multiple_choice_goes_to_the_direct_prompt_with_its_options(rotated_room):
    e = engine(rotated_room)
    out = e.ask("Is the sofa left of the tv?", ["A. yes", "B. no"], direct=True)
    assert out.success
    assert e.reasoner.calls[0]["task"] == "qa" and list(e.reasoner.calls[0]["options"]) == ["A. yes", "B. no"]


def tilted_memory(room_fixture, degrees):
    """The same room in a world frame whose z is `degrees` off gravity (about x)."""
    tilt = geometry.make_transform(np.zeros(3), [np.sin(np.radians(degrees) / 2), 0.0, 0.0,
                                                 np.cos(np.radians(degrees) / 2)])
    vmap, store = VoxelMap(0.05), KeyframeStore(max_keyframes=50, min_interval_s=0.0)
    for f in room_fixture[2].frames():
        moved = Frame(f.rgb, f.depth, f.K, tilt @ f.pose, f.stamp)
        vmap.integrate_frame(moved)
        store.offer(moved)
    return room_fixture[0], vmap, store, tilt


def test_a_tilted_world_is_levelled_and_the_answer_says_so(rotated_room):
    room, vmap, store, tilt = tilted_memory(rotated_room, 3.0)
    e = QueryEngine(BoxOracle(room), store, vmap, QueryLimits())
    out = e.ground("the sofa")
    assert out.success and re.search(r"levelled by [23]\.\d deg to the fitted floor", out.message), out.message
    gravity_in_world = tilt[:3, 2]  # the true up, in the tilted world's coordinates
    model_up = np.linalg.inv(e.reasoner.calls[0]["A"])[:3, 2]
    assert np.degrees(np.arccos(np.clip(model_up @ gravity_in_world, -1, 1))) < 1.0
    assert e.alignment_info.leveled and e.alignment_info.floor_found


def test_trusting_world_frame_keeps_its_z(rotated_room):
    room, vmap, store, _ = tilted_memory(rotated_room, 3.0)
    e = QueryEngine(BoxOracle(room), store, vmap, QueryLimits(trust_world_frame=True))
    out = e.ground("the sofa")
    assert out.success and "levelled" not in out.message
    np.testing.assert_allclose(np.linalg.inv(e.reasoner.calls[0]["A"])[:3, 2], [0, 0, 1], atol=1e-9)
