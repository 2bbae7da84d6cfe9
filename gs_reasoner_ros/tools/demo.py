"""`gs-reasoner demo`: the whole product in one command, over real DDS.

It starts reasoner_node as its own process, replays a procedurally generated room (labelled
furniture, rendered to 640x480 RGB-D along a camera path) through the camera topics with the
camera pose on /tf, asks ~/ground and ~/ask, prints the answers and boxes next to the true
furniture boxes, and writes outputs/demo/birds_eye.png (the fused ~/map_cloud seen from above
with the boxes) and outputs/demo/map.ply. When ../shared/data/rgbd_3dmatch is present it
then clears the node and does the same with those five real frames. Finally it stops the
node with SIGINT.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REAL_FRAMES = REPO.parent / "shared" / "data" / "rgbd_3dmatch"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default="",
                        help="GS-Reasoner checkpoint folder, 'demo' (the shipped demo model, the default when "
                             "installed) or 'tiny' (UNTRAINED random weights: meaningless answers)")
    parser.add_argument("--questions", type=int, default=3, help="grounding requests on the generated room")
    parser.add_argument("--vision-tower", default="", help="SigLIP folder if the checkpoint lacks the vision tower")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--output", default="outputs/demo", help="folder for the pictures, clouds and the node log")
    parser.add_argument("--frames", type=int, default=24, help="frames of the synthetic room to replay")
    parser.add_argument("--rate", type=float, default=10.0, help="replay rate in Hz")
    parser.add_argument("--seed", type=int, default=0, help="which synthetic room")
    parser.add_argument("--num-frames", type=int, default=16, help="keyframes the model sees per query")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="token budget per query (default: 48 untrained, the model's default otherwise)")
    parser.add_argument("--real-frames", default=str(REAL_FRAMES),
                        help="3DMatch-layout folder replayed as a second scene ('' to skip)")
    parser.add_argument("--startup-timeout", type=float, default=300.0,
                        help="seconds to wait for the node (loading real weights takes a while)")


def run(args) -> int:
    from gs_reasoner_ros.ros import dds

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    _isolate(out)
    dds.use_bundled_fastdds_profile()
    dds.reclaim_stale_shm()
    t_start = time.monotonic()
    from gs_reasoner_ros.ros.node import default_checkpoint

    checkpoint = args.checkpoint or default_checkpoint()
    if checkpoint == "demo":
        print("[demo] the node runs the DEMO model: a small GS-Reasoner trained on generated synthetic rooms,\n"
              "       not GS-Reasoner's release (README: Model weights). It knows a dozen furniture classes.")
    elif checkpoint == "tiny":
        print("[demo] the node runs a tiny model with UNTRAINED (random) weights, so its answers\n"
              "       and boxes are meaningless; the demo shows the pipeline. Get the weights: README, Model weights.")
    else:
        print(f"[demo] checkpoint: {checkpoint}")
    args.checkpoint = checkpoint
    budget = args.max_new_tokens if args.max_new_tokens is not None else (48 if checkpoint == "tiny" else 0)
    node = _start_node(args, out)
    try:
        return _session(args, out, node, budget, t_start)
    finally:
        rc = _stop(node)
        print(f"[demo] node stopped with SIGINT (exit status {rc}); its log: {out / 'node.log'}")


def _isolate(out: Path) -> None:
    """Keep the demo's traffic on this machine and off a robot's default domain, and its logs
    beside its outputs, unless the user chose otherwise."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOG_DIR", str((out / "ros_log").resolve()))
    print(f"[demo] ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, discovery "
          f"{os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']}")


def _start_node(args, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gs_reasoner_ros.ros.process", "--ros-args",
           "-p", f"device:={args.device}", "-p", f"num_frames:={args.num_frames}",
           "-p", "map_publish_period_s:=0.5", "-p", "keyframe_min_interval_s:=0.0",
           "-p", f"export_root:={(out / 'exports').resolve()}"]
    for name, value in (("checkpoint", args.checkpoint), ("vision_tower", args.vision_tower)):
        if value in ("demo", "tiny"):
            cmd += ["-p", f"{name}:={value}"]
        elif value:  # rcl cannot parse an empty override ("name:="); empty is the default anyway
            cmd += ["-p", f"{name}:={Path(value).expanduser().resolve()}"]
    log = open(out / "node.log", "w")
    print("[demo] starting reasoner_node:", " ".join(cmd[1:]))
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _stop(proc: subprocess.Popen) -> int:
    from gs_reasoner_ros.ros.harness import stop_process

    stop_process(proc)
    return proc.returncode


def _session(args, out: Path, node: subprocess.Popen, budget: int, t_start: float) -> int:
    scene, room = _demo_room_scene(args.seed, args.frames)
    client = _Client(node)
    try:
        if not client.wait_ready(args.startup_timeout):
            print(f"[demo] the node did not come up; last lines of {out / 'node.log'}:")
            print(_tail(out / "node.log"))
            return 1
        print(f"[demo] node ready after {time.monotonic() - t_start:.1f} s")
        ok = _synthetic_room(client, scene, room, args, out, budget)
        if ok and args.real_frames and Path(args.real_frames).is_dir():
            ok = _real_frames(client, Path(args.real_frames), args, out, budget)
        elif ok:
            print("[demo] no real frames folder; skipping the second scene")
        print(f"[demo] {'done' if ok else 'FAILED'} in {time.monotonic() - t_start:.1f} s; outputs in {out}/")
        return 0 if ok else 1
    finally:
        client.close()


def _demo_room_scene(seed: int, frames: int):
    """A generated room the demo model never saw in training (seed beyond the training seeds),
    rendered along its camera loop (640x480), `frames` views kept evenly."""
    import numpy as np

    from gs_reasoner_ros.scene import Scene
    from gs_reasoner_ros.training.demo_recipe import EVAL_SEED_BASE
    from gs_reasoner_ros.training.rooms import camera_walk, demo_room, render_views

    room_seed = EVAL_SEED_BASE + 500 + seed
    room = demo_room(room_seed)
    poses = camera_walk(room, room_seed)
    poses = poses[np.linspace(0, len(poses) - 1, min(frames, len(poses))).astype(int)]
    print(f"[demo] rendering a held-out generated room (seed {room_seed}, {len(poses)} frames, 640x480)")
    views = render_views(room, poses, 640, 480)
    scene = Scene(np.stack([v.rgb for v in views]), np.stack([v.depth for v in views]), views[0].K,
                  np.stack([v.pose for v in views]), stamps=np.arange(len(views)) * 1.0)
    return scene, room


def _synthetic_room(client, scene, room, args, out: Path, budget: int) -> bool:
    from gs_reasoner_ros.evaluation.rooms import GROUND, item_score, room_eval_items
    from gs_reasoner_ros.training.rooms import model_frame_boxes

    print(f"[demo] replaying {len(scene)} frames at {args.rate:g} Hz on color/image, depth/image, "
          "color/camera_info and /tf (map -> camera_color_optical_frame)")
    pts, cols = client.replay(scene, args.rate)
    if pts is None:
        return False
    print(f"[demo] fused map: {len(pts)} points (2 cm voxels) from ~/map_cloud")
    import numpy as np

    labels, boxes = model_frame_boxes(room, np.eye(4))  # world frame: the room is not turned
    items = room_eval_items("demo", labels, boxes, scene.poses[0], 0)
    grounds = [i for i in items if i["kind"] == GROUND][:args.questions]
    asks = [i for i in items if i["kind"] != GROUND and i["question_type"] != "object_counting"][:1]
    returned, ok = [], True
    for item in grounds:
        g = client.query("ground", item["question"], budget)
        _report(f"~/ground '{item['question']}'", g)
        ok &= g is not None
        got = [_world_aabb(o) for o in (g.objects if g else [])]
        scored = item_score(item, got)
        print(f"         returned {_aabb_text(scored['pred_box'])}\n         true     {_aabb_text(item['box'])}"
              f"   IoU {scored['iou']:.2f}")
        returned += [(f"{o.label} (IoU {scored['iou']:.2f})", *_box_tuple(o)[1:]) for o in (g.objects if g else [])[:1]]
    for item in asks:
        a = client.query("ask", item["question"], budget)
        _report(f"~/ask '{item['question']}'", a, answer=True)
        ok &= a is not None
        print(f"         true answer: {item['ground_truth']}")
        returned += [_box_tuple(o) for o in (a.objects if a else [])]
    print("[demo] true furniture boxes (world frame 'map'):")
    truth = [b for b in room.world_boxes() if b[0] != "clutter"]
    for label, center, quat, size in truth:
        print(f"         {_box_line(label, center, quat, size)}")
    _write_outputs(out, "", pts, cols, returned + [("true " + b[0], *b[1:]) for b in truth])
    return ok


def _world_aabb(obj):
    """[min xyz, max xyz] of a returned (possibly turned) box: the extent of its corners."""
    import numpy as np

    from gs_reasoner_ros import geometry

    _, center, quat, size = _box_tuple(obj)
    R = geometry.matrix_from_quat(quat)
    corners = np.array([[x, y, z] for x in (-.5, .5) for y in (-.5, .5) for z in (-.5, .5)]) * size
    world = corners @ R.T + center
    return np.concatenate([world.min(axis=0), world.max(axis=0)])


def _aabb_text(box) -> str:
    if box is None:
        return "(no box)"
    return "min ({:.2f}, {:.2f}, {:.2f}) max ({:.2f}, {:.2f}, {:.2f})".format(*box)


def _real_frames(client, folder: Path, args, out: Path, budget: int) -> bool:
    from gs_reasoner_ros.scene import load_3dmatch

    scene = _gravity_up(load_3dmatch(folder))
    c = client.call("clear")
    print(f"[demo] second scene: {folder} ({len(scene)} real RGB-D frames); ~/clear: {c.message if c else 'failed'}")
    pts, cols = client.replay(scene, min(args.rate, 5.0))
    if pts is None:
        return False
    print(f"[demo] fused map: {len(pts)} points")
    question = "What is the largest piece of furniture in this room?"
    a = client.query("ask", question, budget)
    _report(f"~/ask '{question}'", a, answer=True)
    _write_outputs(out, "_3dmatch", pts, cols, [_box_tuple(o) for o in (a.objects if a else [])])
    return a is not None


def _gravity_up(scene):
    """3DMatch poses live in the first camera's world (y roughly down), not a z-up map. Re-express
    them as a robot's map would be: z along the fitted floor's normal (the cameras' up is the hint),
    walls along x and y."""
    from gs_reasoner_ros import geometry

    A, info = geometry.estimate_alignment(scene.world_points(8), poses=scene.poses, return_info=True)
    print(f"[demo] re-expressing the recording z-up for the map frame ({info.message})")
    scene.poses = A @ scene.poses
    return scene


def _report(title: str, resp, answer: bool = False) -> None:
    if resp is None:
        print(f"[demo] {title}: no response")
        return
    print(f"[demo] {title}: {'ok' if resp.success else 'FAILED'} in {resp.latency_s:.1f} s, "
          f"{resp.keyframes_used} keyframes, frame '{resp.header.frame_id}'")
    if resp.message:
        print(f"         message: {resp.message}")
    if answer:
        print(f"         answer: {resp.answer!r}")
    for o in resp.objects:
        print(f"         {_box_line(*_box_tuple(o))}  confidence {o.confidence:.2f}")
    if not resp.objects and resp.success:
        print("         (no boxes in this answer)")


def _box_tuple(obj):
    import numpy as np

    c, q, s = obj.bbox.center.position, obj.bbox.center.orientation, obj.bbox.size
    return (obj.label, np.array([c.x, c.y, c.z]), np.array([q.x, q.y, q.z, q.w]), np.array([s.x, s.y, s.z]))


def _box_line(label, center, quat, size) -> str:
    import numpy as np

    yaw = np.degrees(2 * np.arctan2(quat[2], quat[3]))
    return (f"{label:<14} center ({center[0]:6.2f}, {center[1]:6.2f}, {center[2]:5.2f})  "
            f"size {size[0]:.2f} x {size[1]:.2f} x {size[2]:.2f} m  yaw {yaw:6.1f} deg")


def _write_outputs(out: Path, suffix: str, pts, cols, boxes) -> None:
    from gs_reasoner_ros.visualization import birds_eye_png, write_ply

    png = birds_eye_png(out / f"birds_eye{suffix}.png", pts, cols, boxes=boxes, min_size=1000)
    ply = write_ply(out / f"map{suffix}.ply", pts, cols)
    print(f"[demo] wrote {png} (bird's-eye view of the fused cloud with the boxes) and {ply}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Client:
    """The demo's side over DDS: the shared harness Probe (camera, ~/clear, map cloud), giving up
    as soon as the node process ends, and the planners' client for the questions (actions)."""

    def __init__(self, node_proc: subprocess.Popen):
        from gs_reasoner_ros.client import ReasonerClient
        from gs_reasoner_ros.ros.harness import Probe

        self.probe = Probe(name="gs_reasoner_demo", alive=lambda: node_proc.poll() is None)
        self.reasoner = ReasonerClient(name="gs_reasoner_demo_planner")

    def wait_ready(self, timeout: float) -> bool:
        p = self.probe
        ready = p.spin_until(lambda: p.player.subscribers_ready() and p.services_ready(), timeout)
        ready = ready and self.reasoner.wait_for_server(max(1.0, timeout / 2))
        return ready and p.player.wait_for_subscribers(1.0)  # let the node's readers match too

    def query(self, action: str, text: str, budget: int, timeout: float = 600.0):
        """~/ask or ~/ground through its action, streamed: the Result, or None on a timeout."""
        t0 = time.monotonic()
        goal = (self.reasoner.ask_stream(text, max_new_tokens=budget, timeout_s=timeout) if action == "ask"
                else self.reasoner.ground_stream(text, max_new_tokens=budget, timeout_s=timeout))
        first, feedback, first_box = None, 0, None
        try:
            for fb in goal:
                feedback += 1
                first = first if first is not None else time.monotonic() - t0
                if fb.objects and first_box is None:
                    first_box = time.monotonic() - t0
            result = goal.result()
        except (TimeoutError, RuntimeError) as err:
            print(f"[demo] ~/{action}: {err}")
            return None
        box = f", first box after {first_box:.2f} s" if first_box is not None else ""
        print(f"[demo] ~/{action} streamed {feedback} feedback messages (first after "
              f"{first if first is not None else float('nan'):.2f} s{box}), goal {goal.status_name}")
        return result

    def replay(self, scene, rate: float):
        """Play the scene; return the decoded map cloud once it includes the last frame."""
        from gs_reasoner_ros.ros import conversions

        stamps = self.probe.player.play(scene, rate)
        cloud = self.probe.cloud_at(stamps[-1], 30.0)
        if cloud is None:
            print("[demo] the map never included the last frame (see the node log)")
            return None, None
        return conversions.cloud_to_arrays(cloud)

    def call(self, name: str, timeout: float = 600.0, **fields):
        try:
            return self.probe.call(name, timeout, **fields)
        except TimeoutError as err:
            print(f"[demo] {err}")
            return None

    def close(self) -> None:
        self.reasoner.close()
        self.probe.close()
