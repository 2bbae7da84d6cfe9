"""reasoner_node: the ROS 2 lifecycle node around scene memory and GS-Reasoner.

A thin shell: it converts messages and delegates to ROS-free libraries (the live pipeline in
gs_reasoner_ros.pipeline: intake, TF tree, timelines, queries, the model's thread; scene_memory
for keyframes and the voxel map; the reasoner for the model).

Lifecycle: configure loads the model and allocates the stores and TF subscriptions; activate
subscribes to the camera (intake); deactivate stops intake; cleanup frees everything. The
services and /diagnostics exist in every state, so a node whose configure failed (a broken
checkpoint) stays up and says why on /diagnostics and in every service answer. With autostart
(default) it configures and activates itself at start.

Faults it absorbs: a camera that pauses (counted as an input gap), a localiser that jumps
(relocalisation: the map is cleared or re-anchored), stamps or the ROS clock going back (a new
timeline: TF, synchronizer queues and waiting frames are dropped, the map and keyframes too
unless told otherwise).

Threads (MultiThreadedExecutor): the camera subscriptions and the synchronizer in one mutually
exclusive group, TF in another, outputs (map cloud, diagnostics) in a third, the services in a
reentrant group. Callbacks on the executor only do bookkeeping: a synced frame is queued for
the intake thread, which decodes it, waits for its pose and fuses it. (rclpy re-dispatches a
ready entity of a busy mutually exclusive group in a tight loop, so a callback that fused a
frame itself would spin the executor and starve the very thread doing the work.) The model
runs on the QueryWorker thread, so sensors and TF keep flowing during a query. No callback lets an
exception out: bad input is rejected, counted and reported in a throttled warning and on
/diagnostics.
"""
from __future__ import annotations

import gc
import os
import time

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import ClockChange, JumpThreshold
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray
from diagnostic_msgs.msg import DiagnosticArray

from gs_reasoner_ros.pipeline import budget
from gs_reasoner_ros.pipeline.export import ExportBudget, export_scene
from gs_reasoner_ros.pipeline.frame_preparer import FramePreparer
from gs_reasoner_ros.pipeline.health import Health, Reporter, accelerator_memory, bounded
from gs_reasoner_ros.pipeline.intake import Intake
from gs_reasoner_ros.pipeline.queries import QueryEngine, QueryLimits, QueryOutcome
from gs_reasoner_ros.pipeline.query_worker import QueryWorker, Refused
from gs_reasoner_ros.ros import cameras, conversions, params, qos
from gs_reasoner_ros.ros.actions import AnswerOutputs, QueryActions
from gs_reasoner_ros.ros.diagnostics import diagnostic_array
from gs_reasoner_ros.ros.lifecycle import init_lifecycle
from gs_reasoner_ros.ros.tf import make_buffer
from gs_reasoner_ros.srv import AskSpatialQuestion, ExportScene, GroundObjects

NODE_NAME = "gs_reasoner"
SPARE_SERVICE_THREADS = 2  # for ~/clear and ~/export_scene while queries hold theirs
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def default_checkpoint() -> str:
    """What an empty checkpoint parameter loads: the shipped demo model, or the untrained tiny
    model where this install has no demo weights."""
    from gs_reasoner_ros.model.demo import DEMO, TINY, demo_checkpoint_dir

    return DEMO if demo_checkpoint_dir() is not None else TINY


def load_reasoner(p):
    """The default model factory: Reasoner.load from the parameters."""
    from gs_reasoner_ros.reasoner import Reasoner

    dtype = p.dtype if p.dtype != "auto" else ("bfloat16" if p.device.startswith("cuda") else "float32")
    checkpoint = os.path.expanduser(p.checkpoint) if p.checkpoint else default_checkpoint()
    return Reasoner.load(checkpoint=checkpoint, device=p.device, dtype=dtype, deterministic=p.deterministic,
                         vision_tower=os.path.expanduser(p.vision_tower) if p.vision_tower else None,
                         num_frames=p.num_frames, seed=p.seed, max_question_chars=p.max_question_chars,
                         max_new_tokens_cap=p.max_new_tokens_limit,
                         frame_cache_size=budget.frame_cache_entries(p.max_keyframes, p.num_frames))


class ReasonerNode(LifecycleNode):
    """The gs_reasoner node. `reasoner_factory(params) -> reasoner` replaces Reasoner.load
    (tests inject fakes); other keywords go to rclpy's Node."""

    def __init__(self, node_name: str = NODE_NAME, *, reasoner_factory=None, **kwargs):
        # LifecycleNode's own __init__, but with lifecycle services that hold a burst (ros/lifecycle.py).
        Node.__init__(self, node_name, **kwargs)
        init_lifecycle(self)
        self.p = params.declare(self)
        self.add_post_set_parameters_callback(lambda _: setattr(self, "p", params.read(self)))
        self.health = Health()
        self.report = Reporter(self.health, self.get_logger())
        self._trim = budget.PeriodicTrim()  # on the diagnostics timer, in every state: see budget.py
        self._factory = reasoner_factory or load_reasoner
        # One group per output timer: a map publish waiting for the map lock must not hold up
        # /diagnostics (a ready entity of a busy group makes rclpy's executor spin).
        self._groups = {name: MutuallyExclusiveCallbackGroup() for name in ("intake", "tf", "output", "map")}
        self._groups["services"] = ReentrantCallbackGroup()
        self.intake: Intake | None = None
        self.exit_requested = False  # set by the lifecycle shutdown transition
        self._active = False
        self._configure_error = ""
        self._release()
        self._create_outputs()
        self._create_services()
        self.outputs = AnswerOutputs(self)  # ~/markers and ~/detections
        self.actions = QueryActions(self, self.outputs)  # ~/ask and ~/ground as actions (ros/actions.py)
        # In every state, so a failed configure is reported. (rclpy's Node owns self._timers.)
        self._diagnostics_timer = self.create_timer(self.p.diagnostics_period_s, self._publish_diagnostics,
                                                    callback_group=self._groups["output"])
        if self.p.autostart:
            self.autostart()

    # ---- lifecycle ------------------------------------------------------------------

    def autostart(self) -> bool:
        """configure + activate; False (with the reason logged) when configure fails."""
        self.trigger_configure()
        if self.state != "inactive":
            return False
        self.trigger_activate()
        return self.state == "active"

    @property
    def state(self) -> str:
        return self._state_machine.current_state[1]

    def executor_threads(self) -> int:
        """Enough threads that running and waiting queries (at most 1 + query_queue_size, a
        read-only parameter) never take the threads of intake, TF, the outputs, the control
        services (lifecycle, parameters) and ~/clear / ~/export_scene."""
        return len(self._groups) - 1 + 2 + 1 + self.p.query_queue_size + SPARE_SERVICE_THREADS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from gs_reasoner_ros.scene_memory import KeyframeStore, make_voxel_map

        t_configure = time.monotonic()
        self.p = self._loaded_p = p = params.read(self)
        self._configure_error = ""
        self.health.set("configure_error", "")
        too_big = budget.refusal(p, model_on_cpu=p.device == "cpu")
        if too_big:
            return self._configure_failed(f"bad parameters: {too_big}")
        try:
            self.voxel_map = make_voxel_map(voxel_size=p.voxel_size, max_voxels=p.max_voxels,
                                            eviction=p.map_eviction, device=p.map_device)
            self.keyframes = KeyframeStore(
                max_keyframes=p.max_keyframes, min_translation=p.keyframe_min_translation_m,
                min_rotation_deg=p.keyframe_min_rotation_deg, min_interval_s=p.keyframe_min_interval_s,
                max_interval_s=p.keyframe_max_interval_s, eviction=p.keyframe_eviction)
            self._cameras = cameras.configured_cameras(self, p)  # several, compressed: ros/cameras.py
        except ValueError as err:  # parameters that disagree with each other
            return self._configure_failed(f"bad parameters: {err}")
        warm = self.voxel_map.warmup()
        if getattr(self.voxel_map, "kernel_error", ""):
            self.get_logger().warning(f"voxel map on {p.map_device}: its GPU kernels failed "
                                      f"({self.voxel_map.kernel_error}); fusing frames with plain torch instead")
        elif warm > 0:
            self.get_logger().info(f"voxel map on {p.map_device}: kernels ready in {warm:.2f} s")
        self.get_logger().info(f"configuring: loading the model (checkpoint={p.checkpoint or '<none>'}, "
                               f"device={p.device})")
        try:
            self.reasoner = self._factory(p)
        except Exception as err:  # noqa: BLE001 (a bad checkpoint fails the transition, not the process)
            return self._configure_failed(f"cannot load the model: {type(err).__name__}: {err}")
        untrained = bool(getattr(self.reasoner, "untrained", False))
        if untrained:
            self.get_logger().warning("NO CHECKPOINT: running a tiny UNTRAINED model; every answer is "
                                      "meaningless and says so. Set the checkpoint parameter to a "
                                      "GS-Reasoner folder (README: Model weights).")
        note = str(getattr(self.reasoner, "model_note", "") or "")
        if note:
            self.get_logger().warning(f"{note}. Set the checkpoint parameter to a GS-Reasoner folder for the "
                                      "released model (README: Model weights).")
        self.health.set("model_loaded", True)
        self.health.set("untrained", untrained)
        self.health.set("model_note", note)
        self.health.set("checkpoint", p.checkpoint)
        self.health.set("device", p.device)
        self.tf = make_buffer(p.tf_cache_s)
        self.engine = QueryEngine(self.reasoner, self.keyframes, self.voxel_map, self._limits())
        self.worker = QueryWorker(p.query_queue_size, p.query_wait_s)
        if p.prepare_keyframes and hasattr(self.reasoner, "prepare_frames"):
            self.preparer = FramePreparer(self.reasoner, lambda err: self.report.reject("keyframe preparation", err))
        self.intake = Intake(lambda: self.p, self.voxel_map, self.keyframes, self.tf, self.report,
                             lambda synced: conversions.decode_rgbd(*synced), self.preparer, self._drop_sync_after,
                             now=lambda: self.get_clock().now().nanoseconds * 1e-9)
        if p.time_jump_reset_s > 0:  # only fires for ROS time, i.e. use_sim_time with a /clock
            threshold = JumpThreshold(min_forward=None, min_backward=Duration(seconds=-p.time_jump_reset_s),
                                      on_clock_change=False)
            self._jump_handle = self.get_clock().create_jump_callback(threshold, post_callback=self._on_clock_jump)
        g = self._groups
        self._subs = [
            self.create_subscription(TFMessage, "/tf", self._on_tf, qos.TF, callback_group=g["tf"]),
            self.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, static=True),
                                     qos.TF_STATIC, callback_group=g["tf"]),
        ]
        self._configured_timers = []
        if p.map_publish_period_s > 0:
            self._configured_timers.append(self.create_timer(p.map_publish_period_s, self._publish_map,
                                                             callback_group=g["map"]))
        self.health.set("configure_s", round(time.monotonic() - t_configure, 2))  # model load + warm-up
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.p
        self._sync = cameras.CameraInputs(self, self._cameras, p, self._groups["intake"], self._on_input,
                                          self._on_frame)  # a synchronizer per camera, like one to the node
        self._inputs = self._sync.filters
        self._active = True
        self.intake.start()
        self.get_logger().info(f"active: intake from {self._sync.describe()} ({p.input_qos}), poses in {p.world_frame}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_intake()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_intake()
        self._release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Finalized is a dead end for a lifecycle node: the process ends (code 0) after this
        transition, so a supervisor can start it again."""
        self._stop_intake()
        self._release()
        self.exit_requested = True
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_intake()
        self._release()
        return SUCCESS

    def _stop_intake(self) -> None:
        self._active = False
        for f in getattr(self, "_inputs", []):
            self.destroy_subscription(f.sub)
        self._inputs, self._sync = [], None
        if self.intake is not None:
            self.intake.stop()

    def _configure_failed(self, why: str) -> TransitionCallbackReturn:
        """Stay unconfigured and keep saying why (log, /diagnostics, every service answer)."""
        self.get_logger().error(why)
        self._configure_error = why
        self.health.set("configure_error", why)
        self.voxel_map = self.keyframes = None
        return FAILURE

    def _release(self) -> None:
        """Drop everything configure made (also the initial state). Publishers, services and
        the diagnostics timer stay: they report the state, whatever it is."""
        for part in (getattr(self, "worker", None), getattr(self, "preparer", None)):
            if part is not None:
                part.stop()
        for timer in getattr(self, "_configured_timers", []):
            self.destroy_timer(timer)
        for sub in getattr(self, "_subs", []):
            self.destroy_subscription(sub)
        handle = getattr(self, "_jump_handle", None)
        if handle is not None:
            handle.unregister()
        if self.intake is not None:
            self.intake.stop()
        self._configured_timers, self._subs, self._jump_handle = [], [], None
        self.reasoner = self.tf = self.voxel_map = self.keyframes = self.engine = self.worker = None
        self.preparer = self.intake = None
        self._loaded_p = None
        self._inputs, self._sync = [], None
        self._published_version = -1
        self._last_synced_wall = None
        self.health.set("model_loaded", False)
        gc.collect()  # the model's and the caches' reference cycles, so the trim can return their pages
        budget.trim_heap()

    def stop(self, timeout_s: float = 0.5) -> bool:
        """Shutdown path of main(): refuse queries and release waiting callers at once.
        Returns False while a model call is still running on the worker thread."""
        self._active = False
        if self.intake is not None:
            self.intake.stop()
        return self.worker is None or self.worker.stop(timeout_s)

    # ---- entities -------------------------------------------------------------------

    def _not_configured(self) -> str:
        why = f"the node is {self.state}, not configured"
        return f"{why}: {self._configure_error}" if self._configure_error else why

    def _create_outputs(self) -> None:
        g = self._groups["output"]
        self._pubs = {
            "markers": self.create_publisher(MarkerArray, "~/markers", qos.LATCHED, callback_group=g),
            "map": self.create_publisher(PointCloud2, "~/map_cloud", qos.LATCHED, callback_group=g),
            "diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS, callback_group=g),
        }

    def _create_services(self) -> None:
        g = self._groups["services"]
        self._services_made = [
            self.create_service(srv_type, name, callback, qos_profile=qos.SERVICES, callback_group=g)
            for srv_type, name, callback in ((AskSpatialQuestion, "~/ask", self._srv_ask),
                                             (GroundObjects, "~/ground", self._srv_ground),
                                             (Trigger, "~/clear", self._srv_clear),
                                             (ExportScene, "~/export_scene", self._srv_export))
        ]

    def _limits(self) -> QueryLimits:
        """Limits for the next query: the caps the model was loaded with, the rest live."""
        p, loaded = self.p, self._loaded_p or self.p
        return QueryLimits(loaded.max_question_chars, p.default_max_new_tokens, loaded.max_new_tokens_limit,
                           p.num_frames, p.align_to_walls, p.trust_world_frame)

    # ---- intake (the pipeline does the work; these only count and hand over) -------

    def _on_input(self, name: str, msg) -> None:
        """Every colour, depth and camera_info message, before the synchronizer: counted, and
        its stamp checked for a jump back (a new timeline)."""
        self.health.count(name)
        try:
            stamp = conversions.stamp_to_sec(msg.header.stamp)
        except Exception:  # noqa: BLE001 (the decoder rejects it later)
            return
        if self.intake is not None:
            self.intake.observe_stamp("input", name, stamp)

    def _on_frame(self, color: Image, depth: Image, info: CameraInfo, camera: str = "") -> None:
        self.health.count("synced")
        now = time.monotonic()
        last, self._last_synced_wall = self._last_synced_wall, now
        if last is not None and now - last > self.p.input_gap_s:
            self.health.count("input_gaps")
            self.health.set("last_input_gap_s", round(now - last, 2))
            self.get_logger().warning(f"camera input resumed after a {now - last:.1f} s gap (input_gap_s)")
        if self._active and self.intake is not None:
            self.intake.submit((color, depth, info, camera), conversions.stamp_to_sec(depth.header.stamp))

    def _drop_sync_after(self, cutoff: float) -> None:
        sync = self._sync
        if sync is None:
            return
        if hasattr(sync, "drop_after"):  # ours
            sync.drop_after(cutoff)
            return
        lock, queues = getattr(sync, "lock", None), getattr(sync, "queues", None)  # the system one's: all
        if lock is not None and queues is not None:
            with lock:
                for q in queues:
                    q.clear()

    def _on_clock_jump(self, jump) -> None:
        if jump.clock_change in (ClockChange.ROS_TIME_ACTIVATED, ClockChange.ROS_TIME_DEACTIVATED):
            return  # use_sim_time switched: a different clock, not time going back
        try:
            now = self.get_clock().now().nanoseconds * 1e-9
            if self.intake is not None:
                self.intake.new_timeline(f"the ROS clock jumped back {-jump.delta.nanoseconds * 1e-9:.1f} s", now)
        except Exception as err:  # noqa: BLE001 (never raise into rclpy's clock)
            self.get_logger().error(f"resetting after a clock jump failed: {err}")

    def _on_tf(self, msg: TFMessage, static: bool = False) -> None:
        tf, intake = self.tf, self.intake
        if tf is None or intake is None:
            return
        for ts in msg.transforms:
            try:
                stamp = conversions.stamp_to_sec(ts.header.stamp)
                t, r = ts.transform.translation, ts.transform.rotation
                intake.add_transform(ts.header.frame_id.lstrip("/"), ts.child_frame_id.lstrip("/"), stamp,
                                     (t.x, t.y, t.z), (r.x, r.y, r.z, r.w), static=static)
            except Exception as err:  # noqa: BLE001
                n = self.health.count("tf_invalid")
                self.report.throttled("warning", f"ignored a transform {ts.header.frame_id[:64]!r} -> "
                                      f"{ts.child_frame_id[:64]!r}: {err} ({n} so far)")
        self.health.count("tf")

    # ---- outputs --------------------------------------------------------------------

    def _publish_map(self) -> None:
        try:
            intake = self.intake
            if intake is None or intake.version == self._published_version:
                return
            version = intake.version
            pts, cols = self.voxel_map.snapshot()
            stamp = intake.newest_stamp or self.get_clock().now().nanoseconds * 1e-9
            self._pubs["map"].publish(conversions.cloud_msg(pts, cols, stamp, self.p.world_frame))
            self._published_version = version
        except Exception as err:  # noqa: BLE001
            self.report.throttled("error", f"map publishing failed: {err}")

    def _publish_diagnostics(self) -> None:
        self._trim()
        try:
            intake = self.intake
            if intake is not None:
                self.health.set("keyframes", len(self.keyframes))
                self.health.set("map_points", len(self.voxel_map))
                self.health.set("newest_integrated_stamp", round(intake.newest_stamp, 3))
            info = self.engine.alignment_info if self.engine is not None else None
            if info is not None:
                self.health.set("alignment", info.level_reason)
                self.health.set("alignment_up_correction_deg", round(info.up_correction_deg, 2))
                self.health.set("alignment_wall_yaw_deg", round(info.yaw_deg, 1))
            last = self._last_synced_wall
            self.health.set("last_frame_age_s", "never" if last is None else round(time.monotonic() - last, 2))
            self.health.set("input_gap_s", self.p.input_gap_s)
            self.health.set("query_running", bool(self.worker and self.worker.busy))
            self.health.set("intake_waiting", intake.waiting if intake is not None else 0)
            for key, value in accelerator_memory().items():
                self.health.set(key, value)
            if self._sync is not None:  # the system message_filters does not count its drops
                self.health.set("sync_dropped_total", getattr(self._sync, "dropped", "n/a"))
            name = self.get_fully_qualified_name().lstrip("/")  # robot1/gs_reasoner: two robots, two names
            arr = diagnostic_array(name, self.get_clock().now().to_msg(), self.health.snapshot(), self._active)
            self._pubs["diagnostics"].publish(arr)
        except Exception as err:  # noqa: BLE001
            self.report.throttled("error", f"diagnostics failed: {err}")

    def _publish_markers(self, outcome: QueryOutcome, streamed: bool = False) -> None:
        self.outputs.boxes(outcome.objects, outcome.stamp, new_answer=not streamed)

    # ---- services -------------------------------------------------------------------

    def _query(self, prepare, on_progress=None) -> QueryOutcome:
        """Validate in the service thread (against this moment's limits, which travel with the
        request), run the model on the worker (streamed to on_progress: the actions), publish markers."""
        engine, worker = self.engine, self.worker
        if engine is None or worker is None:
            return QueryOutcome(False, self._not_configured())
        request = prepare(engine, self._limits())
        if isinstance(request, QueryOutcome):
            outcome = request
        else:
            try:
                outcome = worker.run(engine.run, request, on_progress)
            except Refused as err:
                self.health.count("queries_refused")
                outcome = QueryOutcome(False, str(err))
            except Exception as err:  # noqa: BLE001
                outcome = QueryOutcome(False, f"internal error: {type(err).__name__}: {err}")
        self.health.count("queries_served" if outcome.success else "queries_failed")
        if outcome.success:
            self.get_logger().info(f"answered {getattr(request, 'task', '?')} query in {outcome.latency_s:.2f} s: "
                                   f"{len(outcome.objects)} objects, answer {outcome.answer[:80]!r}")
            self.health.set("last_query_latency_s", round(outcome.latency_s, 3))
            try:
                self._publish_markers(outcome, streamed=on_progress is not None)
            except Exception as err:  # noqa: BLE001
                self.get_logger().error(f"markers failed: {err}")
        else:
            self.report.throttled("warning", f"query failed: {outcome.message}", 1.0)
        return outcome

    def _fill(self, resp, outcome: QueryOutcome):
        return conversions.fill_query_response(resp, outcome, self.p.world_frame,
                                               self.get_clock().now().nanoseconds * 1e-9)

    def _srv_ask(self, req, resp):
        outcome = self._query(lambda e, limits: e.prepare_ask(req.question, list(req.options), req.direct,
                                                              req.max_new_tokens, limits))
        resp.answer, resp.reasoning = outcome.answer, outcome.reasoning
        return self._fill(resp, outcome)

    def _srv_ground(self, req, resp):
        outcome = self._query(lambda e, limits: e.prepare_ground(req.description, req.max_new_tokens, limits))
        return self._fill(resp, outcome)

    def _srv_clear(self, req, resp):
        intake = self.intake
        if intake is None:
            resp.success, resp.message = False, self._not_configured()
            return resp
        n_kf, n_pts = intake.clear()
        self._publish_markers(QueryOutcome(True))
        resp.success, resp.message = True, f"cleared {n_kf} keyframes and {n_pts} map points"
        return resp

    def _srv_export(self, req, resp):
        resp.success, resp.path = False, ""
        if self.keyframes is None:
            resp.message = self._not_configured()
            return resp
        try:
            limit = ExportBudget(self.p.export_budget_mb << 20, self.p.export_max_count)
            path = export_scene(self.keyframes, self.p.export_root, req.name, self.engine.alignment(self._limits()),
                                limit)
            resp.success, resp.message, resp.path = True, "", str(path)
        except Exception as err:  # noqa: BLE001 (a refused name or a disk error is the caller's answer)
            resp.message = bounded(str(err))
        return resp
