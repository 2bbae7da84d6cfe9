"""The node's /diagnostics messages from a snapshot of its health figures.

diagnostic_updater is not on PyPI, so this is a small stand-in: a pure function that turns a
gs_reasoner_ros.pipeline.health snapshot into the DiagnosticArray the node publishes on a timer.
"""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from gs_reasoner_ros.pipeline.health import bounded

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def _status(level, name, message, hardware_id, values: dict) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=bounded(message), hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=bounded(v)) for k, v in values.items()])


def diagnostic_array(node_name: str, stamp, snap: dict, active: bool) -> DiagnosticArray:
    """The node's four statuses (input, tf, map, model) from a Health snapshot plus the
    values the node sets itself (keyframes, map_points, model_loaded, untrained, ...)."""
    g = snap.get
    inputs = {k: g(k, 0) for k in ("color_hz", "depth_hz", "camera_info_hz", "synced_hz", "integrated_hz",
                                   "synced_total", "sync_dropped_total", "rejected_total")}
    inputs.update({k: g(k, 0) for k in ("input_gaps_total", "last_input_gap_s", "intake_waiting",
                                        "intake_dropped_total")})
    inputs.update({k: v for k, v in snap.items() if "/" in k and k.endswith("_hz")})  # per camera (cameras)
    inputs["last_rejection"] = g("last_rejection", "")
    age = g("last_frame_age_s", "never")
    inputs["last_frame_age_s"] = age
    stalled = isinstance(age, (int, float)) and age > g("input_gap_s", float("inf"))
    if not active:
        level, msg = OK, "inactive (no intake)"
    elif g("synced_hz", 0) == 0:
        level, msg = WARN, "no synced colour/depth/camera_info frames in the last 5 s"
    elif g("rejected_hz", 0) > 0:
        level, msg = WARN, f"rejecting input: {g('last_rejection', '')}"
    elif stalled:
        level, msg = WARN, f"no synced frame for {age:.1f} s (input_gap_s)"
    else:
        level, msg = OK, f"{g('synced_hz', 0):.1f} synced frames/s"
    tf = {k: g(k, 0) for k in ("tf_hz", "tf_failures_total", "tf_waiting", "tf_invalid_total")}
    tf["last_tf_failure"] = g("last_tf_failure", "")
    tf_level = WARN if g("tf_failures_hz", 0) > 0 else OK
    tf_msg = f"dropping frames without a pose: {g('last_tf_failure', '')}" if tf_level == WARN else "poses found"
    mapping = {k: g(k, 0) for k in ("keyframes", "map_points", "integrated_total", "newest_integrated_stamp",
                                    "time_jump_resets_total", "relocalizations_total")}
    mapping.update({k: g(k, "") for k in ("last_time_jump", "last_relocalization", "alignment",
                                          "alignment_up_correction_deg", "alignment_wall_yaw_deg")})
    # per fused frame since configure: map integration time, and wall clock minus the frame's stamp
    mapping.update({f"{d}_{q}": g(f"{d}_{q}", "") for d in ("integrate_ms", "fused_lag_ms")
                    for q in ("p50", "p95", "max", "count")})
    model = {k: g(k, "") for k in ("model_loaded", "untrained", "checkpoint", "device", "configure_error",
                                   "configure_s", "gpu_allocated_mb", "gpu_reserved_mb", "model_note")}
    model.update({k: g(k, 0) for k in ("queries_served_total", "queries_failed_total", "queries_refused_total",
                                       "last_query_latency_s", "query_running")})
    if not g("model_loaded", False) and g("configure_error", ""):
        m_level, m_msg = ERROR, f"configure failed: {g('configure_error')}"
    elif not g("model_loaded", False):
        m_level, m_msg = ERROR, "model not loaded (node not configured)"
    elif g("untrained", False):
        m_level, m_msg = WARN, "UNTRAINED model weights (no checkpoint): answers are meaningless"
    elif g("model_note", ""):
        m_level, m_msg = OK, f"model loaded: {g('model_note')}"
    else:
        m_level, m_msg = OK, "model loaded"
    hw = node_name
    return DiagnosticArray(header=_header(stamp), status=[
        _status(level, f"{node_name}: input", msg, hw, inputs),
        _status(tf_level, f"{node_name}: tf", tf_msg, hw, tf),
        _status(OK, f"{node_name}: map", f"{g('keyframes', 0)} keyframes, {g('map_points', 0)} map points",
                hw, mapping),
        _status(m_level, f"{node_name}: model", m_msg, hw, model),
    ])


def _header(stamp) -> Header:
    return Header(stamp=stamp)
