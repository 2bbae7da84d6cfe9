"""Streaming answers (issue 17), measured: decode ms/token with streaming on vs off, and through
the node over DDS the time from a goal to its first feedback, its first box (in the feedback
and on ~/markers) and its result, against the service path (a service gives every box at once,
with its response).

    python scripts/gpu/stream_bench.py --json                  # full-size random bf16 model on CUDA
    python scripts/gpu/stream_bench.py --tiny --json           # CPU smoke test (tiny model)

Random weights write no boxes, so in both paths the streamed token ids the parser sees are
replaced by a scripted answer's ids (gs_reasoner_ros.scripted.SCRIPT, then filler text): the
model still decodes every token on the device and the host still parses, rotates, publishes;
only the text is the script's. Generation is forced to the full budget (no eos) so each run
decodes the same number of tokens. The decode comparison alternates off/on runs on one warm
decoder (no ROS); the node comparison alternates service and action calls, each "warm" (a
follow-up: visual tokens and prompt prefix cached) and "cold" (the reasoner's caches cleared
first). Medians of --repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke test)")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--frames", type=int, default=None, help="keyframes per question (32; 2 with --tiny)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per answer (256; 160 with --tiny: the script's three boxes close by token 133)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-node", action="store_true", help="only the decode comparison (no ROS)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[stream_bench] {msg}", file=sys.stderr, flush=True)


def script_ids(tokenizer, n: int) -> list[int]:
    """n token ids: the scripted answer (three boxes), then filler text."""
    from gs_reasoner_ros.scripted import SCRIPT

    ids = tokenizer(SCRIPT).input_ids
    filler = tokenizer(" and the rest of the reasoning goes on").input_ids
    while len(ids) < n:
        ids += filler
    return ids[:n]


def scripted_stream(reasoner, ids: list[int]) -> None:
    """Make the streamed ids the script's (see the module docstring)."""
    generate = reasoner.model.generate

    def wrapped(*args, on_token=None, **kwargs):
        if on_token is not None:
            user = on_token
            on_token = lambda i, token, prob: user(i, ids[min(i, len(ids) - 1)], prob)  # noqa: E731
        return generate(*args, on_token=on_token, **kwargs)

    reasoner.model.generate = wrapped


def build(args):
    import torch

    from gs_reasoner_ros.reasoner import Reasoner
    from gs_reasoner_ros.tools.bench.common import bench_scene, bench_tokenizer, build_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    frames, tokens = args.frames or (2 if args.tiny else 32), args.tokens or (160 if args.tiny else 256)
    t0 = time.perf_counter()
    model = build_model(args.tiny, device)
    reasoner = Reasoner(model, bench_tokenizer(args.tiny), num_frames=frames, max_new_tokens_cap=max(tokens, 64))
    if device.type == "cuda":
        reasoner.setup_decoder()
    reasoner.eos_token_ids = []  # every answer decodes the full budget
    log(f"model on {device} ready in {time.perf_counter() - t0:.1f} s")
    scene = bench_scene(frames, args.tiny)
    return device, reasoner, scene, frames, tokens


def decode_comparison(reasoner, scene, tokens: int, repeats: int) -> dict:
    """Decode ms/token with and without streaming, alternating, on one warm decoder (no ROS)."""
    from gs_reasoner_ros.pipeline.queries import QueryEngine, QueryLimits
    from gs_reasoner_ros.tools.bench.common import keyframe_store

    store = keyframe_store(scene)
    limits = QueryLimits(num_frames=len(scene), align_to_walls=False, max_new_tokens_limit=tokens)
    engine = QueryEngine(reasoner, store, None, limits)
    request = engine.prepare_ask("Where is the sofa relative to the table?", max_new_tokens=tokens)
    boxes = []
    runs = {"off": [], "on": []}
    engine.run(request)  # visual tokens and prefix cached: both modes decode on the same prefix
    for _ in range(repeats):
        for mode in ("off", "on"):
            outcome = engine.run(request, on_progress=(lambda p: boxes.append(len(p.new_objects))) if mode == "on"
                                 else None)
            assert outcome.success, outcome.message
            t = reasoner.model.decoder.last_timings
            runs[mode].append(1000.0 * t["decode_s"] / max(t["new_tokens"] - 1, 1))
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    return dict(decode_ms_per_token_off=round(off, 4), decode_ms_per_token_on=round(on, 4),
                decode_on_over_off=round(on / off, 4), decode_runs=runs,
                streamed_boxes_per_answer=sum(boxes) // max(repeats, 1), first_box_token=first_box_token(reasoner))


def first_box_token(reasoner) -> int | None:
    """The token (1-based) whose text closes the script's first box, as the stream parser sees it."""
    from gs_reasoner_ros.reasoning import StreamParser

    parser = StreamParser(reasoner.tokenizer)
    for token in script_ids(reasoner.tokenizer, 512):
        if parser.feed(token, 1.0).new_objects:
            return len(parser.probs)
    return None


class Watch:
    """Arrival times of ~/markers messages that hold boxes (the planner's side)."""

    def __init__(self, node):
        from visualization_msgs.msg import MarkerArray

        from gs_reasoner_ros.ros import qos
        from gs_reasoner_ros.ros.conversions.markers import BOX_NS

        self.box_times, self._lock, self._ns = [], threading.Lock(), BOX_NS
        node.create_subscription(MarkerArray, "/gs_reasoner/markers", self._on_markers, qos.LATCHED)

    def _on_markers(self, msg) -> None:
        if any(m.ns == self._ns for m in msg.markers):
            with self._lock:
                self.box_times.append(time.monotonic())

    def first_box_after(self, t0: float):
        with self._lock:
            return next((t - t0 for t in self.box_times if t >= t0), None)


def node_comparison(reasoner, scene, tokens: int, repeats: int) -> dict:
    """Goal to first feedback / first box / result (action) against the service's response."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # node and planner share this host
    from gs_reasoner_ros.ros import dds

    dds.use_bundled_fastdds_profile()  # 640x480 frames need the bigger shared-memory segment
    from gs_reasoner_ros.client import ReasonerClient
    from gs_reasoner_ros.ros.harness import InProcessNode

    h = InProcessNode(dict(num_frames=len(scene), keyframe_min_interval_s=0.0, keyframe_min_translation_m=0.0,
                           keyframe_min_rotation_deg=0.0, tf_timeout_s=2.0,
                           max_new_tokens_limit=max(tokens, 64)), reasoner_factory=lambda p: reasoner)
    client = ReasonerClient(name="stream_bench_planner")
    watch = Watch(client.node)
    try:
        assert h.player.wait_for_subscribers(20.0) and client.wait_for_server(20.0)
        h.player.play(scene, rate_hz=5.0)
        assert h.wait_for(lambda: len(h.node.keyframes) >= len(scene), 60.0), \
            f"the node took {len(h.node.keyframes)} of {len(scene)} keyframes"
        question = "Where is the sofa relative to the table?"
        client.ask(question, max_new_tokens=tokens, timeout_s=600)  # compile/caches settled once
        runs: dict[str, list] = {}
        for _ in range(repeats):
            for temperature in ("warm", "cold"):
                _service_run(h, reasoner, question, tokens, temperature, runs)
                _action_run(client, watch, reasoner, question, tokens, temperature, runs)
        return {k: round(statistics.median(v), 4) for k, v in sorted(runs.items()) if v}
    finally:
        client.close()
        h.close()


def _service_run(h, reasoner, question, tokens, temperature, runs) -> None:
    if temperature == "cold":
        reasoner.clear_caches()
    t0 = time.monotonic()
    resp = h.call("ask", timeout=600, question=question, max_new_tokens=tokens)
    assert resp.success, resp.message
    runs.setdefault(f"{temperature}_service_response_s", []).append(time.monotonic() - t0)


def _action_run(client, watch, reasoner, question, tokens, temperature, runs) -> None:
    if temperature == "cold":
        reasoner.clear_caches()
    t0 = time.monotonic()
    goal = client.ask_stream(question, max_new_tokens=tokens, timeout_s=600)
    first = first_box = None
    for fb in goal:
        now = time.monotonic() - t0
        first = now if first is None else first
        if fb.objects and first_box is None:
            first_box = now
    result = goal.result()
    done = time.monotonic() - t0
    assert result.success, result.message
    for key, value in (("first_feedback_s", first), ("first_box_feedback_s", first_box),
                       ("first_box_marker_s", watch.first_box_after(t0)), ("result_s", done)):
        if value is not None:
            runs.setdefault(f"{temperature}_action_{key}", []).append(value)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, reasoner, scene, frames, tokens = build(args)
    scripted_stream(reasoner, script_ids(reasoner.tokenizer, tokens))
    from gs_reasoner_ros.tools.bench.common import device_name

    result = dict(device=device_name(device), tiny=bool(args.tiny), frames=frames, tokens=tokens, repeats=args.repeats)
    result.update(decode_comparison(reasoner, scene, tokens, args.repeats))
    log(f"decode: {result['decode_ms_per_token_off']:.3f} ms/token off, {result['decode_ms_per_token_on']:.3f} on")
    if not args.no_node:
        result.update(node_comparison(reasoner, scene, tokens, args.repeats))
    print(json.dumps(result, indent=None if args.json else 2), flush=True)
    return 0


if __name__ == "__main__":
    status = main()
    sys.stderr.flush()
    os._exit(status)  # as reasoner_node does: interpreter teardown under rclpy's and torch's threads can abort
