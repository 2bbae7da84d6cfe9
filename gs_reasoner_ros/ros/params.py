"""Every parameter of reasoner_node, declared in this one place.

The table PARAMETERS is the single source: the node declares from it (with descriptions,
ranges and read-only flags), config/reasoner.yaml and README.md's parameter table are rendered from
it (`python -m gs_reasoner_ros.ros.params yaml|readme`), and a unit test checks all three
agree. "next configure" in a description means the value is read when the node is
configured or activated; the others apply to the next query or tick.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from types import SimpleNamespace

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult

from gs_reasoner_ros.pipeline import intake


@dataclass(frozen=True)
class Param:
    name: str
    default: bool | int | float | str | list
    description: str
    low: float | None = None  # inclusive range for int/float
    high: float | None = None
    choices: tuple[str, ...] = ()  # for a list: of each element
    read_only: bool = False
    pattern: str | None = None  # regex a string value must match


PARAMETERS: tuple[Param, ...] = (
    Param("autostart", True, "Configure and activate at start, so a plain start serves at once; "
          "false leaves the node unconfigured for a lifecycle manager.", read_only=True),
    Param("world_frame", "map", "Fixed frame (REP-105) that keyframes, the map, boxes and markers are "
          "expressed in; should be gravity-aligned with z up.", read_only=True,
          pattern=r"^[A-Za-z_][A-Za-z0-9_/]*$"),
    # model
    Param("checkpoint", "", "GS-Reasoner checkpoint folder (official layout); empty runs the shipped demo "
          "model (small, trained on synthetic rooms; every answer says so), 'demo' the same, 'tiny' an "
          "untrained random model (tests).", read_only=True),
    Param("vision_tower", "", "SigLIP folder when the checkpoint does not hold the vision tower; "
          "empty = the checkpoint's own.", read_only=True),
    Param("device", "cpu", "Torch device for the model: cpu, cuda or cuda:N.", read_only=True,
          pattern=r"^(cpu|cuda(:\d+)?)$"),
    Param("dtype", "auto", "Model dtype: auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16 or float16.",
          read_only=True, choices=("auto", "float32", "bfloat16", "float16")),
    Param("deterministic", True, "Fixed point sampling and serialization order in the point encoder, so a query "
          "repeats exactly; false reproduces the authors' random choices from seed.",
          read_only=True),
    Param("seed", 0, "Random seed for the model (and the untrained weights).", 0, 2**31 - 1, read_only=True),
    Param("num_frames", 32, "Keyframes given to the model per query (the model was trained with 32).", 1, 128),
    # input
    Param("cameras", [""], "Topic prefix of each RGB-D camera fused into the one map (1 to 4), e.g. "
          "[head, wrist] subscribes head/color/image, head/depth/image, head/color/camera_info and the "
          "same under wrist/; the empty prefix is the plain color/image, depth/image, color/camera_info. "
          "Each camera has its own synchronizer; its pose is looked up for its camera_info's frame_id "
          "(next configure)."),
    Param("camera_transports", ["raw"], "Transport of each camera, one per entry of cameras, in the same order: "
          "raw (sensor_msgs/Image on color/image, depth/image) or compressed (sensor_msgs/CompressedImage "
          "as image_transport names them: color/image/compressed, JPEG or PNG, and depth/image/compressedDepth, "
          "PNG 16UC1 or quantised 32FC1) (next configure).", choices=("raw", "compressed")),
    Param("input_qos", "SENSOR_DATA", "QoS of the colour, depth and camera_info subscriptions (next activate).",
          choices=("SENSOR_DATA", "SYSTEM_DEFAULT", "RELIABLE")),
    Param("sync_slop_s", 0.02, "Largest stamp difference between colour, depth and camera_info of one frame "
          "(next activate).", 0.0, 1.0),
    Param("sync_queue_size", 10, "Messages per input the synchronizer keeps while pairing (next activate).", 1, 100),
    Param("tf_timeout_s", 0.5, "How long a frame waits for the camera pose at its stamp before it is dropped.",
          0.0, 10.0),
    Param("tf_cache_s", 10.0, "History kept per TF edge (next configure).", 1.0, 300.0),
    Param("tf_pending_frames", 8, "Frames that may wait for TF at once; the oldest is dropped beyond it.",
          1, 64),
    Param("intake_queue_size", intake.DEFAULT_QUEUE_SIZE, "Synced frames that may wait for the intake thread (decoding, pose, fusing); "
          "beyond it the oldest is dropped and counted (intake_dropped_total), so a slow machine falls behind "
          "by at most this many frames.", 1, 64),
    Param("time_jump_reset_s", 1.0, "If the stamps of the camera inputs (at least two of colour, depth, "
          "camera_info, agreeing) or the ROS clock (use_sim_time) go back by more than this (bag loop, "
          "simulator reset), the node starts a new timeline: TF history, synchronizer queues and frames "
          "waiting for TF are dropped, and the map and keyframes as time_jump_clear_map says; a TF edge "
          "alone never starts one, and stamps of 0 or far ahead of the clock are dropped and counted; "
          "0 disables.", 0.0, 3600.0),
    Param("time_jump_clear_map", True, "On a new timeline (time_jump_reset_s) also clear the map and keyframes; "
          "false keeps them (a bag that loops over the same place in the same world_frame)."),
    Param("input_gap_s", 1.0, "A pause between synced frames longer than this is counted on /diagnostics as an "
          "input gap (camera stopped and restarted), and the input status warns while it lasts.", 0.05, 3600.0),
    Param("relocalization_jump_m", 0.0, "A camera pose that moves more than this between consecutive frames "
          "less than 1 s apart is a relocalisation (the localiser corrected world_frame), handled by "
          "relocalization_action. 0 (default) disables it: replays of sparse keyframes (the demo) jump by "
          "design; on a robot with a localiser set it to a distance the camera cannot travel in one frame "
          "interval, e.g. 0.5. Never below 5 times the camera's typical recent step.", 0.0, 100.0),
    Param("relocalization_jump_deg", 0.0, "The same for the rotation between consecutive frames, degrees "
          "(e.g. 45); 0 (default) disables the rotation test.", 0.0, 180.0),
    Param("relocalization_action", "clear", "What a relocalisation does: clear (forget the map and keyframes: "
          "never fuses two inconsistent frames) or reanchor (move the map and keyframes by the jump, "
          "assuming the camera itself hardly moved between the two frames).", choices=("clear", "reanchor")),
    Param("max_depth_m", 10.0, "Depth beyond this (or not finite) is no measurement: never a map point or "
          "a keyframe pixel.", 0.3, 100.0),
    # map and keyframes
    Param("memory_budget_mb", 4096, "Host memory the map, the keyframes and the model's frame cache may take "
          "together; a configuration whose worst case exceeds it is refused at configure, naming the "
          "parameter. Images larger than 640x480 are reduced before they are kept.", 256, 1_000_000,
          read_only=True),
    Param("voxel_size", 0.02, "Voxel edge of the fused map, metres (next configure).", 0.005, 1.0),
    Param("max_voxels", 500000, "Cap on map voxels; beyond it map_eviction decides (next configure).",
          1000, 50_000_000),
    Param("map_device", "cpu", "Where the voxel map runs: cpu (numpy) or cuda/cuda:N (torch, for fast "
          "cameras beside the model on a GPU) (next configure).", read_only=True, pattern=r"^(cpu|cuda(:\d+)?)$"),
    Param("map_eviction", "farthest", "Which voxels go when the map is full: farthest (from the camera) "
          "or oldest (next configure).", choices=("farthest", "oldest")),
    Param("map_stride", 2, "Pixel stride when fusing depth into the map (1 = every pixel).", 1, 16),
    Param("map_publish_period_s", 1.0, "Period of ~/map_cloud when the map changed; 0 disables it "
          "(next configure).", 0.0, 60.0),
    Param("max_keyframes", 200, "Cap on stored keyframes; beyond it keyframe_eviction decides (next configure).",
          1, 10000),
    Param("keyframe_eviction", "oldest", "Which keyframe goes when the store is full: oldest, or farthest "
          "from the newest camera (next configure).", choices=("oldest", "farthest")),
    Param("keyframe_min_translation_m", 0.2, "Camera motion that makes a new keyframe (next configure).",
          0.0, 100.0),
    Param("keyframe_min_rotation_deg", 15.0, "Camera rotation that makes a new keyframe (next configure).",
          0.0, 180.0),
    Param("keyframe_min_interval_s", 0.2, "Minimum time between keyframes (next configure).", 0.0, 3600.0),
    Param("keyframe_max_interval_s", 5.0, "A keyframe is taken at least this often while frames arrive "
          "(next configure).", 0.0, 3600.0),
    # queries
    Param("prepare_keyframes", True, "Preprocess each new keyframe for the model as it arrives (on its own "
          "thread), so a question only applies the poses; off: all preprocessing at question time "
          "(next configure)."),
    Param("align_to_walls", True, "Rotate the scene about gravity so the dominant walls are axis-aligned "
          "for the model (as in training); boxes are rotated back to world_frame."),
    Param("trust_world_frame", False, "Take world_frame's z as gravity as it is; false (default): fit the "
          "map's floor and level the scene the model sees to it when the floor is clear (keeping "
          "world_frame's z when it is not; /diagnostics and the answer's message say which)."),
    Param("default_max_new_tokens", 0, "Token budget when a request says 0; 0 = the model's per-task default "
          "(1024 with chain of thought, 512 for grounding and direct answers).", 0, 8192),
    Param("max_new_tokens_limit", 2048, "Largest token budget a request may ask for; larger requests are "
          "clamped to it (next configure).", 1, 8192),
    Param("max_question_chars", 2000, "Longest question (plus options) or description accepted; longer ones "
          "are refused (next configure).", 1, 100_000),
    Param("query_queue_size", 1, "Queries that may wait while one runs; more are refused at once "
          "(0 = refuse whenever busy). A waiting query holds one executor thread, so the thread pool is "
          "sized from this at start and it cannot change later.", 0, 16, read_only=True),
    Param("query_wait_s", 30.0, "Longest a waiting query waits for the running one before it is refused.",
          0.0, 3600.0),
    Param("export_root", "~/.ros/gs_reasoner/exports", "Folder ~/export_scene writes into; names "
          "resolving outside it are refused.", read_only=True),
    Param("export_budget_mb", 2048, "Disk that exports under export_root may take together; an export that "
          "would exceed it (or export_max_count) is refused: delete old exports to make room.", 1, 1_000_000,
          read_only=True),
    Param("export_max_count", 100, "Most exports kept under export_root (see export_budget_mb).", 1, 100_000,
          read_only=True),
    Param("diagnostics_period_s", 1.0, "Period of /diagnostics (read at start).", 0.1, 60.0),
)

BY_NAME = {p.name: p for p in PARAMETERS}


def defaults() -> dict:
    return {p.name: p.default for p in PARAMETERS}


def check(name: str, value) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None when it is."""
    p = BY_NAME.get(name)
    if p is None:
        return f"unknown parameter {name!r}"
    if isinstance(p.default, list):
        return _check_list(p, value)
    if type(value) is not type(p.default) and not (isinstance(p.default, float) and type(value) is int):
        return f"{name} must be {type(p.default).__name__}, got {type(value).__name__}"
    if p.low is not None and not (p.low <= value <= p.high):
        return f"{name}={value} is outside [{p.low}, {p.high}]"
    if p.choices and value not in p.choices:
        return f"{name}={value!r} must be one of {', '.join(p.choices)}"
    if p.pattern and not re.match(p.pattern, value):
        return f"{name}={value!r} is malformed (expected {p.pattern})"
    return None


def _check_list(p: Param, value) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return f"{p.name} must be a list of strings, got {value!r}"
    bad = [v for v in value if p.choices and v not in p.choices]
    if bad:
        return f"{p.name}: {bad[0]!r} must be one of {', '.join(p.choices)}"
    return None


def declare(node) -> SimpleNamespace:
    """Declare every parameter on `node` and return their current values."""
    for p in PARAMETERS:
        desc = ParameterDescriptor(name=p.name, description=p.description, read_only=p.read_only)
        if p.choices:
            desc.additional_constraints = "one of: " + ", ".join(p.choices)
        if isinstance(p.default, bool) or p.low is None:
            pass
        elif isinstance(p.default, int):
            desc.integer_range = [IntegerRange(from_value=int(p.low), to_value=int(p.high), step=0)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(p.low), to_value=float(p.high), step=0.0)]
        node.declare_parameter(p.name, p.default, desc)

    def on_set(params):
        for prm in params:
            if prm.name in BY_NAME:
                why = check(prm.name, prm.value)
                if why:
                    return SetParametersResult(successful=False, reason=why)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    values = read(node)
    for name, value in vars(values).items():  # overrides from the command line or a file
        why = check(name, value)
        if why:
            raise ValueError(f"parameter {why}")
    return values


def read(node) -> SimpleNamespace:
    values = {}
    for p in PARAMETERS:
        v = node.get_parameter(p.name).value
        if isinstance(p.default, list):
            v = list(v)
        values[p.name] = float(v) if isinstance(p.default, float) and isinstance(v, int) else v
    return SimpleNamespace(**values)


# ---- rendered files ---------------------------------------------------------------------

def _yaml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    return repr(v)


def _wrap(text: str, width: int, prefix: str) -> list[str]:
    import textwrap

    return [prefix + line for line in textwrap.wrap(text, width)]


def render_yaml() -> str:
    """config/reasoner.yaml: every parameter with its default and its description."""
    lines = ["# reasoner_node parameters (rendered from gs_reasoner_ros/ros/params.py; edit there).",
             "# Use: reasoner_node --ros-args --params-file config/reasoner.yaml",
             "/**/gs_reasoner:", "  ros__parameters:"]
    for p in PARAMETERS:
        extra = f" Range {p.low}..{p.high}." if p.low is not None else ""
        lines += _wrap(p.description + extra + (" Read-only." if p.read_only else ""), 92, "    # ")
        lines.append(f"    {p.name}: {_yaml_value(p.default)}")
    return "\n".join(lines) + "\n"


README_START, README_END = "<!-- parameters: start -->", "<!-- parameters: end -->"


def render_markdown() -> str:
    """The README's parameter table (between README_START and README_END)."""
    lines = ["Rendered from `gs_reasoner_ros/ros/params.py`; after editing it, run "
             "`python -m gs_reasoner_ros.ros.params readme`.",
             "Read-only parameters can only be set at start (`--ros-args -p name:=value` or a params file).", "",
             "| name | default | range / values | description |", "|---|---|---|---|"]
    for p in PARAMETERS:
        allowed = (f"{p.low} .. {p.high}" if p.low is not None else " \\| ".join(p.choices))
        ro = " *(read-only)*" if p.read_only else ""
        lines.append(f"| `{p.name}` | `{_yaml_value(p.default)}` | {allowed} | {p.description}{ro} |")
    return "\n".join(lines) + "\n"


def readme_section(readme_text: str) -> str:
    """The parameter table as it stands in README.md."""
    start, end = readme_text.index(README_START), readme_text.index(README_END)
    return readme_text[start + len(README_START):end].strip("\n") + "\n"


def update_readme(path) -> None:
    """Rewrite README.md's parameter table from PARAMETERS."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text()
    start, end = text.index(README_START), text.index(README_END)
    path.write_text(text[:start + len(README_START)] + "\n" + render_markdown() + text[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["readme"]:
        from pathlib import Path

        update_readme(Path(__file__).resolve().parents[2] / "README.md")
    else:
        print({"yaml": render_yaml, "markdown": render_markdown}[sys.argv[1]](), end="")
