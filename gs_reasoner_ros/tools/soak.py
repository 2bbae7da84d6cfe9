"""gs-reasoner soak: many synced RGB-D frames through the running node, with queries, memory sampled.

Starts reasoner_node as its own process (a fast stand-in model by default, or the tiny untrained
GS-Reasoner with --model tiny), renders a closed camera loop through the synthetic room once
(640x480 by default) and replays it cyclically over DDS (colour, depth, camera_info and the pose
on /tf) at --rate Hz, with stamps advancing at --stamp-hz (faster than real time when rate >
stamp-hz; the loop is closed, so the pose never jumps). Every --query-every seconds it calls
~/ask or ~/ground (one in flight at a time); --storm-at fires 50 concurrent ~/ask calls once.
Every --sample-s seconds it records the node's resident memory (psutil), keyframes, map size,
counters from /diagnostics and the backlog (how far the newest integrated frame lags behind the
newest sent one), then writes curve.csv and summary.json under --out and prints the summary.

`python -m gs_reasoner_ros.tools.soak node [--ros-args ...]` is the node process with the stand-in model.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STORM_CALLS = 50
STORM_WINDOW_S = 3.0
NODE = "/gs_reasoner"
CURVE_FIELDS = ("t_s", "frames_sent", "synced", "integrated", "rejected", "tf_failures", "sync_dropped",
                "keyframes", "map_points", "rss_mb", "queries_ok", "queries_failed", "lag_frames", "lag_s",
                "tf_waiting", "time_jump_resets", "relocalizations", "color_hz", "depth_hz", "camera_info_hz",
                "synced_hz", "node_cpu_s", "soak_cpu_s", "intake_dropped", "intake_waiting")


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--frames", type=int, default=20000, help="frames to replay")
    a("--rate", type=float, default=30.0, help="frames sent per wall-clock second")
    a("--stamp-hz", type=float, default=15.0,
      help="camera rate the stamps advance at (rate/stamp-hz = speed-up; other than 1, the node runs on "
           "use_sim_time with a /clock that follows the stamps, as for a bag played faster)")
    a("--loop-frames", type=int, default=300, help="distinct frames rendered along the closed loop")
    a("--width", type=int, default=640)
    a("--height", type=int, default=480)
    a("--seed", type=int, default=0, help="room and camera path")
    a("--transport", choices=("raw", "compressed"), default="raw",
      help="camera transport: raw Images, or JPEG colour + compressedDepth PNG (encoded once per loop frame)")
    a("--model", choices=("fake", "tiny"), default="fake",
      help="fake: a fast stand-in that still copies the keyframes; tiny: the untrained tiny GS-Reasoner")
    a("--query-every", type=float, default=3.0, help="seconds between queries (0: none)")
    a("--storm-at", type=int, default=-1, help="frame index at which 50 concurrent ~/ask calls are fired (-1: never)")
    a("--sample-s", type=float, default=2.0, help="seconds between samples of the curve")
    a("--warmup-frames", type=int, default=0,
      help="frames before memory counts as warmed up (0: once keyframes and map have reached their caps "
           "and a third of the frames, at most 2000, went by)")
    a("--max-keyframes", type=int, default=60, help="node parameter max_keyframes")
    a("--max-voxels", type=int, default=150000, help="node parameter max_voxels")
    a("--node-param", action="append", default=[], metavar="NAME:=VALUE", help="more node parameters")
    a("--out", default="outputs/soak", help="folder for curve.csv, summary.json and node.log")
    a("--json", action="store_true", help="print the summary as JSON")


@dataclass
class SoakConfig:
    frames: int = 20000
    rate: float = 30.0
    stamp_hz: float = 15.0
    loop_frames: int = 300
    width: int = 640
    height: int = 480
    seed: int = 0
    transport: str = "raw"
    model: str = "fake"
    query_every: float = 3.0
    storm_at: int = -1
    sample_s: float = 2.0
    warmup_frames: int = 0
    max_keyframes: int = 60
    max_voxels: int = 150000
    node_params: list = field(default_factory=list)
    out: str = "outputs/soak"

    def check(self) -> None:
        if self.frames < 1 or self.loop_frames < 2:
            raise ValueError("need --frames >= 1 and --loop-frames >= 2")
        if not (0 < self.rate <= 1000 and 0 < self.stamp_hz <= 1000):
            raise ValueError("--rate and --stamp-hz must be in (0, 1000]")
        if self.width < 16 or self.height < 16 or self.width * self.height > 4096 * 4096:
            raise ValueError("--width/--height must be at least 16 and at most 4096x4096 pixels")
        if self.sample_s <= 0:
            raise ValueError("--sample-s must be positive")
        for p in self.node_params:
            if ":=" not in p:
                raise ValueError(f"--node-param {p!r} must look like name:=value")


# ---- the node process --------------------------------------------------------------------

class StandInReasoner:
    """A fast model stand-in: answers with a box around the keyframes' camera positions (so the
    node's whole query path runs: frame selection, alignment, boxes back to the world)."""

    untrained = True

    def answer(self, scene, question, options=(), task="spatial", max_new_tokens=None):
        from gs_reasoner_ros.geometry import transform_points
        from gs_reasoner_ros.reasoning import Answer, GroundedBox

        centres = transform_points(scene.axis_align, scene.poses[:, :3, 3])
        box = GroundedBox("camera path", centres.min(0) - 0.1, centres.max(0) + 0.1, 1.0)
        return Answer(answer=f"{task}: {len(scene)} frames", text="<answer>ok</answer>", objects=[box],
                      keyframes_used=len(scene), untrained=True)


def node_main(argv: list[str]) -> int:
    """reasoner_node with the stand-in model (argv as for reasoner_node). SIGUSR1 dumps every
    thread's stack into the log (the soak asks for it when the node does not exit)."""
    import faulthandler

    from gs_reasoner_ros.ros.process import run

    faulthandler.register(signal.SIGUSR1, all_threads=True)

    return run(argv, reasoner_factory=lambda params: StandInReasoner())


def _start_node(cfg: SoakConfig, log_path: Path) -> subprocess.Popen:
    params = {"max_keyframes": cfg.max_keyframes, "max_voxels": cfg.max_voxels, "diagnostics_period_s": 0.5,
              "num_frames": 16 if cfg.model == "tiny" else 32, "camera_transports": f"['{cfg.transport}']"}
    if cfg.rate != cfg.stamp_hz:  # stamps faster than the wall clock would be refused as from the future
        params["use_sim_time"] = "true"
    args = [f"{k}:={v}" for k, v in params.items()] + list(cfg.node_params)
    entry = ["-m", "gs_reasoner_ros.tools.soak", "node"] if cfg.model == "fake" else ["-m", "gs_reasoner_ros.ros.process"]
    cmd = [sys.executable, *entry, "--ros-args", *[x for a in args for x in ("-p", a)]]
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


# ---- frames -------------------------------------------------------------------------------

def render_loop(n: int, width: int, height: int, seed: int = 0, transport: str = "raw"):
    """(K, poses (n,4,4), colour messages, depth messages) along one closed loop: Images, or
    CompressedImages (JPEG, compressedDepth 16UC1 PNG) with transport "compressed"."""
    from gs_reasoner_ros.ros import conversions
    from gs_reasoner_ros.ros.replay import CAMERA_FRAME
    from gs_reasoner_ros.synthetic import camera_path, default_intrinsics, make_room, render_rgbd

    room = make_room(seed)
    poses = camera_path(room, n, seed=seed)
    K = default_intrinsics(width, height)
    colors, depths = [], []
    for pose in poses:
        rgb, depth = render_rgbd(room, K, pose, width, height)
        packed = transport == "compressed"
        colors.append((conversions.rgb_to_compressed if packed else conversions.rgb_to_image)(rgb, 0.0, CAMERA_FRAME))
        depths.append((conversions.depth_to_compressed if packed else conversions.depth_to_image)(depth, 0.0, CAMERA_FRAME))
    return K, poses, colors, depths


class _Queries:
    """Interleaved queries (one in flight) and the storm; counts outcomes, never blocks."""

    def __init__(self, driver, timeout_s: float = 120.0):
        self.d, self.timeout_s = driver, timeout_s
        self.ok = self.failed = self.refused = self.hung = 0
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._inflight = None  # (future, sent_at)
        self._n = 0
        self.storm: dict | None = None

    def tick(self, now: float, every: float, last_sent: float) -> float:
        """Collect a finished query; start the next one when due. Returns when the last was sent."""
        if self._inflight is not None:
            future, sent = self._inflight
            if future.done():
                self._count(future.result())
                self.latencies.append(now - sent)
                self._inflight = None
            elif now - sent > self.timeout_s:
                self.hung += 1
                self._inflight = None
        if self._inflight is None and every > 0 and now - last_sent >= every:
            self._n += 1
            if self._n % 2:
                future = self.d.call_async("ask", question="how big is the room?")
            else:
                future = self.d.call_async("ground", description="the sofa")
            self._inflight = (future, now)
            return now
        return last_sent

    def _count(self, resp) -> None:
        if resp is None:
            self.failed += 1
        elif resp.success:
            self.ok += 1
        elif "busy" in resp.message:
            self.refused += 1
        else:
            self.failed += 1
            if len(self.failures) < 5:
                self.failures.append(resp.message[:200])

    def start_storm(self, now: float, frames_sent: int) -> None:
        futures = [self.d.call_async("ask", question=f"storm {i}?") for i in range(STORM_CALLS)]
        self.storm = {"futures": futures, "t0": now, "frames_sent_at_start": frames_sent,
                      "synced_at_start": self.d.diag_value("synced_total"), "done": False}

    def storm_tick(self, now: float, frames_sent: int) -> None:
        s = self.storm
        if s is None or s["done"]:
            return
        if "seconds" not in s and all(f.done() for f in s["futures"]):
            s["seconds"] = round(now - s["t0"], 2)  # every call answered
        # intake is counted over at least STORM_WINDOW_S: /diagnostics lags by its period
        if ("seconds" not in s or now - s["t0"] < STORM_WINDOW_S) and now - s["t0"] < self.timeout_s:
            return
        results = [f.result() if f.done() else None for f in s["futures"]]
        s.update(done=True, window_s=round(now - s["t0"], 2),
                 answered=sum(1 for r in results if r is not None and r.success),
                 refused=sum(1 for r in results if r is not None and not r.success and "busy" in r.message),
                 other_failures=sum(1 for r in results if r is not None and not r.success and "busy" not in r.message),
                 hung=sum(1 for r in results if r is None),
                 frames_sent_during=frames_sent - s["frames_sent_at_start"],
                 synced_during=self.d.diag_value("synced_total") - s["synced_at_start"])
        del s["futures"]

    def busy(self) -> bool:
        return self._inflight is not None or (self.storm is not None and not self.storm["done"])


def _cpu_s(proc) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except Exception:  # noqa: BLE001 (the node exited)
        return float("nan")


def _rss_mb(proc) -> float:
    try:
        return proc.memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 (the node exited)
        return float("nan")


def run_soak(cfg: SoakConfig, log=print) -> dict:
    """Run the soak; returns the summary (also written to cfg.out/summary.json)."""
    import psutil
    import rclpy

    from gs_reasoner_ros.ros import dds
    from gs_reasoner_ros.ros.harness import Probe
    from gs_reasoner_ros.ros.replay import ClockPublisher

    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dds.use_bundled_fastdds_profile()  # 640x480 frames over shared memory
    dds.reclaim_stale_shm()
    t_render = time.monotonic()
    K, poses, colors, depths = render_loop(cfg.loop_frames, cfg.width, cfg.height, cfg.seed, cfg.transport)
    log(f"[soak] rendered {cfg.loop_frames} frames {cfg.width}x{cfg.height} in {time.monotonic() - t_render:.1f} s")
    proc = _start_node(cfg, out / "node.log")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    driver = None
    try:
        driver = Probe(ctx, name="gs_reasoner_soak", target=NODE, background=True)
        if cfg.transport != "raw":
            from gs_reasoner_ros.ros.replay import ScenePlayer

            driver.player = ScenePlayer(driver.node, transport=cfg.transport)
        clock = ClockPublisher(driver.node, active=cfg.rate != cfg.stamp_hz)
        deadline = time.monotonic() + 60.0
        while not (driver.player.subscribers_ready() and driver.services_ready() and driver.diag()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not come up (exit {proc.poll()}); see {out / 'node.log'}")
            clock.publish(time.time())
            time.sleep(0.1)
        time.sleep(0.5)  # the node's readers match a little after ours do
        summary = _replay(cfg, driver, clock, psutil.Process(proc.pid), K, poses, colors, depths, out, log)
    finally:
        exit_s, code = _stop_node(proc)
        if driver is not None:
            driver.close()
        ctx.try_shutdown()
    summary.update(node_exit_code=code, node_exit_s=round(exit_s, 2), out=str(out))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _stop_node(proc: subprocess.Popen) -> tuple[float, int | None]:
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15.0)
        except subprocess.TimeoutExpired:  # stuck: have it write its stacks to node.log, then kill it
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            proc.kill()
            proc.wait()
    return time.monotonic() - t0, proc.returncode


def _replay(cfg, driver, clock, node_proc, K, poses, colors, depths, out, log) -> dict:
    from gs_reasoner_ros.ros import conversions
    from gs_reasoner_ros.ros.replay import CAMERA_FRAME

    player = driver.player
    n = cfg.frames
    send_wall = np.zeros(n)
    stamp0 = time.time()
    queries = _Queries(driver)
    rows: list[dict] = []
    t0 = time.monotonic()
    next_send, next_sample, last_query = t0, t0, t0
    rss_warm = None
    period = 1.0 / cfg.rate
    for i in range(n):
        j = i % len(poses)
        stamp = stamp0 + i / cfg.stamp_hz
        st = conversions.sec_to_stamp(stamp)
        clock.publish(stamp)
        player.publish_pose(poses[j], stamp)
        player.info.publish(conversions.make_camera_info(K, cfg.width, cfg.height, stamp, CAMERA_FRAME))
        colors[j].header.stamp = st
        depths[j].header.stamp = st
        player.color.publish(colors[j])
        player.depth.publish(depths[j])
        now = time.monotonic()
        send_wall[i] = now
        if i == cfg.storm_at:
            queries.start_storm(now, i + 1)
        queries.storm_tick(now, i + 1)
        last_query = queries.tick(now, cfg.query_every, last_query)
        if now >= next_sample or i == n - 1:
            rows.append(_sample(driver, node_proc, queries, i + 1, now - t0, send_wall, stamp0, cfg.stamp_hz))
            next_sample = now + cfg.sample_s
            if rss_warm is None and _warm(cfg, rows[-1]):
                rss_warm = rows[-1]
            if len(rows) % 15 == 1:
                r = rows[-1]
                log(f"[soak] {r['t_s']:7.1f} s  sent {r['frames_sent']}  integrated {r['integrated']:.0f}  "
                    f"keyframes {r['keyframes']:.0f}  map {r['map_points']:.0f}  rss {r['rss_mb']:.0f} MB  "
                    f"lag {r['lag_s']:.2f} s  queries {queries.ok} ok")
            if node_proc is not None and not node_proc.is_running():
                raise RuntimeError("the node process died; see node.log")
        next_send += period
        time.sleep(max(0.0, next_send - time.monotonic()))
    # let the last frames land and the queries finish, then take the final sample
    settle = time.monotonic() + 30.0
    while time.monotonic() < settle and (queries.busy() or time.monotonic() < send_wall[-1] + 2.0):
        now = time.monotonic()
        clock.publish(stamp + (now - send_wall[-1]) * cfg.rate / cfg.stamp_hz)  # the node's timers go on
        queries.storm_tick(now, n)
        queries.tick(now, 0.0, last_query)
        time.sleep(0.05)
    rows.append(_sample(driver, node_proc, queries, n, time.monotonic() - t0, send_wall, stamp0, cfg.stamp_hz))
    _write_curve(out / "curve.csv", rows)
    return _summarize(cfg, rows, rss_warm, queries, send_wall)


def _warm(cfg, row: dict) -> bool:
    """Warmed up: past --warmup-frames, or (by default) both stores have filled to their caps and
    a third of the frames (at most 2000) went by, so the allocator's own ramp is over too."""
    if cfg.warmup_frames:
        return row["frames_sent"] >= cfg.warmup_frames
    return (row["keyframes"] >= cfg.max_keyframes and row["map_points"] >= 0.8 * cfg.max_voxels
            and row["frames_sent"] >= min(cfg.frames // 3, 2000))


def _sample(driver, node_proc, queries, sent, t, send_wall, stamp0, stamp_hz) -> dict:
    v = driver.diag_value
    newest = v("newest_integrated_stamp", 0.0)
    k = int(round((newest - stamp0) * stamp_hz)) if newest > 0 else -1
    lag_frames = sent - 1 - k if k >= 0 else sent
    lag_s = float(send_wall[sent - 1] - send_wall[k]) if 0 <= k < sent else float("nan")
    return {"t_s": round(t, 2), "frames_sent": sent, "synced": v("synced_total"), "integrated": v("integrated_total"),
            "rejected": v("rejected_total"), "tf_failures": v("tf_failures_total"),
            "sync_dropped": v("sync_dropped_total"), "keyframes": v("keyframes"), "map_points": v("map_points"),
            "rss_mb": round(_rss_mb(node_proc), 1), "queries_ok": queries.ok, "queries_failed": queries.failed,
            "lag_frames": lag_frames, "lag_s": round(lag_s, 3), "tf_waiting": v("tf_waiting"),
            "time_jump_resets": v("time_jump_resets_total"), "relocalizations": v("relocalizations_total"),
            **{k: v(k) for k in ("color_hz", "depth_hz", "camera_info_hz", "synced_hz")},
            "node_cpu_s": round(_cpu_s(node_proc), 2), "soak_cpu_s": round(sum(os.times()[:2]), 2),
            "intake_dropped": v("intake_dropped_total"), "intake_waiting": v("intake_waiting")}


def _write_curve(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        w.writeheader()
        w.writerows(rows)


def _summarize(cfg, rows, warm, queries, send_wall) -> dict:
    end = rows[-1]
    warmed_up = warm is not None
    warm = warm or end
    after = [r for r in rows if r["frames_sent"] >= warm["frames_sent"]]
    rss = np.array([r["rss_mb"] for r in after])
    sent = np.array([r["frames_sent"] for r in after], dtype=float)
    slope = float(np.polyfit(sent, rss, 1)[0] * 1000) if len(after) >= 3 and np.ptp(sent) > 0 else 0.0
    lags = np.array([r["lag_s"] for r in after if np.isfinite(r["lag_s"])])
    third = max(1, len(lags) // 3)
    wall = float(send_wall[-1] - send_wall[0]) if len(send_wall) > 1 else 0.0
    summary = {
        "frames_sent": end["frames_sent"], "frames_synced": end["synced"], "frames_integrated": end["integrated"],
        "frames_integrated_after_warmup": end["integrated"] - warm["integrated"],
        "frames_rejected": end["rejected"], "tf_failures": end["tf_failures"], "sync_dropped": end["sync_dropped"],
        "intake_dropped": end["intake_dropped"],
        "time_jump_resets": end["time_jump_resets"], "relocalizations": end["relocalizations"],
        "send_rate_hz": round((len(send_wall) - 1) / wall, 2) if wall else 0.0,
        "speedup_vs_real_time": round(cfg.rate / cfg.stamp_hz, 2), "wall_s": round(end["t_s"], 1),
        "queries_ok": queries.ok, "queries_failed": queries.failed, "queries_refused": queries.refused,
        "queries_hung": queries.hung, "query_failures": queries.failures,
        "query_latency_mean_s": round(float(np.mean(queries.latencies)), 3) if queries.latencies else None,
        "query_latency_max_s": round(float(np.max(queries.latencies)), 3) if queries.latencies else None,
        "rss_start_mb": rows[0]["rss_mb"], "warmed_up": warmed_up, "warmup_frames": warm["frames_sent"],
        "rss_warmup_mb": warm["rss_mb"],
        "rss_end_mb": end["rss_mb"], "rss_max_after_warmup_mb": float(rss.max()) if len(rss) else None,
        "rss_growth_after_warmup_mb": round(end["rss_mb"] - warm["rss_mb"], 1),
        "rss_slope_after_warmup_mb_per_1000_frames": round(slope, 2),
        "keyframes_max": max(r["keyframes"] for r in rows), "keyframes_cap": cfg.max_keyframes,
        "map_points_max": max(r["map_points"] for r in rows), "map_points_cap": cfg.max_voxels,
        "lag_s_max_after_warmup": round(float(lags.max()), 3) if len(lags) else None,
        "lag_s_mean_first_third": round(float(lags[:third].mean()), 3) if len(lags) else None,
        "lag_s_mean_last_third": round(float(lags[-third:].mean()), 3) if len(lags) else None,
        "tf_waiting_max": max(r["tf_waiting"] for r in rows),
        "node_cpu_s": end["node_cpu_s"], "samples": len(rows), "gpu_memory": "n/a (CPU run)",
    }
    if queries.storm is not None:
        summary["storm"] = {k: v for k, v in queries.storm.items() if k not in ("t0", "done")}
    return summary


def _print_summary(s: dict, out: str) -> None:
    print(f"[soak] frames sent {s['frames_sent']} at {s['send_rate_hz']} Hz ({s['speedup_vs_real_time']}x real "
          f"time), synced {s['frames_synced']:.0f}, integrated {s['frames_integrated']:.0f}, rejected "
          f"{s['frames_rejected']:.0f}, TF failures {s['tf_failures']:.0f}, sync drops {s['sync_dropped']}")
    print(f"[soak] queries ok {s['queries_ok']}, failed {s['queries_failed']}, refused {s['queries_refused']}, "
          f"hung {s['queries_hung']}; latency mean {s['query_latency_mean_s']} s, max {s['query_latency_max_s']} s")
    print(f"[soak] node RSS: start {s['rss_start_mb']} MB, after warm-up ({s['warmup_frames']} frames) "
          f"{s['rss_warmup_mb']} MB, end {s['rss_end_mb']} MB, max after warm-up {s['rss_max_after_warmup_mb']} MB, "
          f"slope {s['rss_slope_after_warmup_mb_per_1000_frames']} MB/1000 frames; GPU {s['gpu_memory']}")
    print(f"[soak] keyframes max {s['keyframes_max']:.0f} (cap {s['keyframes_cap']}), map points max "
          f"{s['map_points_max']:.0f} (cap {s['map_points_cap']}); backlog: lag max {s['lag_s_max_after_warmup']} s, "
          f"mean first third {s['lag_s_mean_first_third']} s, last third {s['lag_s_mean_last_third']} s, "
          f"frames waiting for TF max {s['tf_waiting_max']:.0f}")
    if "storm" in s:
        st = s["storm"]
        print(f"[soak] storm of {STORM_CALLS} calls: {st.get('answered')} answered, {st.get('refused')} refused, "
              f"{st.get('other_failures')} other failures, {st.get('hung')} hung, all answered in "
              f"{st.get('seconds')} s; {st.get('synced_during'):.0f} frames synced while "
              f"{st.get('frames_sent_during')} were sent in its first {st.get('window_s')} s")
    print(f"[soak] node exit code {s['node_exit_code']} after {s['node_exit_s']} s; curve and summary in {out}")


def run(args) -> int:
    cfg = SoakConfig(frames=args.frames, rate=args.rate, stamp_hz=args.stamp_hz, loop_frames=args.loop_frames,
                     width=args.width, height=args.height, seed=args.seed, model=args.model, transport=args.transport,
                     query_every=args.query_every, storm_at=args.storm_at, sample_s=args.sample_s,
                     warmup_frames=args.warmup_frames, max_keyframes=args.max_keyframes,
                     max_voxels=args.max_voxels, node_params=list(args.node_param), out=args.out)
    try:
        summary = run_soak(cfg)
    except (ValueError, RuntimeError) as err:
        print(f"gs-reasoner soak: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, cfg.out)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["node"]:
        return node_main([sys.argv[0], *argv[1:]])
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gs_reasoner_ros.tools.soak", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["SoakConfig", "run_soak", "render_loop", "StandInReasoner", "add_arguments", "run"]

if __name__ == "__main__":
    sys.exit(main())
