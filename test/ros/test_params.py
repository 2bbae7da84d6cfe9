"""Parameters: one table, and the YAML, the docs and the declared node all agree with it."""
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

from gs_reasoner_ros.ros import params  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
YAMLS = [REPO / "config" / "reasoner.yaml", REPO / "gs_reasoner_ros" / "config" / "reasoner.yaml"]


@pytest.mark.parametrize("path", YAMLS, ids=["config", "package-data"])
def test_yaml_has_every_declared_parameter_with_its_default(path):
    doc = yaml.safe_load(path.read_text())
    assert list(doc) == ["/**/gs_reasoner"]  # matches the node under any namespace
    values = doc["/**/gs_reasoner"]["ros__parameters"]
    assert values == params.defaults()
    assert path.read_text() == params.render_yaml()  # comments too (re-render after editing params.py)


def test_readme_table_is_current():
    text = params.readme_section((REPO / "README.md").read_text())
    assert text == params.render_markdown(), "run: python -m gs_reasoner_ros.ros.params readme"
    for p in params.PARAMETERS:
        assert f"| `{p.name}` |" in text


def test_the_brief_s_parameters_exist():
    names = set(params.BY_NAME)
    assert {"world_frame", "checkpoint", "vision_tower", "device", "dtype", "deterministic", "num_frames",
            "input_qos", "sync_slop_s", "sync_queue_size", "tf_timeout_s", "voxel_size", "max_voxels",
            "map_eviction", "map_stride", "map_publish_period_s", "max_keyframes", "align_to_walls",
            "default_max_new_tokens", "max_question_chars", "max_new_tokens_limit", "query_queue_size",
            "export_root", "diagnostics_period_s", "autostart"} <= names
    assert params.BY_NAME["voxel_size"].default == 0.02 and params.BY_NAME["num_frames"].default == 32
    for name in ("checkpoint", "device", "vision_tower", "export_root"):
        assert params.BY_NAME[name].read_only, name


@pytest.mark.parametrize("name, value, ok", [
    ("voxel_size", 0.05, True), ("voxel_size", 0.0, False), ("voxel_size", 3, False),
    ("num_frames", 8, True), ("num_frames", 0, False), ("num_frames", 8.0, False),
    ("input_qos", "RELIABLE", True), ("input_qos", "BEST", False),
    ("device", "cuda:1", True), ("device", "tpu", False), ("world_frame", "odom", True),
    ("world_frame", "bad frame", False), ("map_eviction", "random", False), ("autostart", 1, False),
    ("tf_timeout_s", 1, True),  # an int where a float is expected is fine
])
def test_check(name, value, ok):
    assert (params.check(name, value) is None) == ok


@pytest.fixture
def ctx():
    c = rclpy.context.Context()
    rclpy.init(context=c)
    yield c
    c.try_shutdown()


def test_declared_on_a_node_with_descriptors_and_validation(ctx):
    node = rclpy.create_node("param_probe", context=ctx)
    try:
        values = params.declare(node)
        declared = set(node._parameters) - {"use_sim_time", "start_type_description_service"}
        assert declared == set(params.BY_NAME)
        assert vars(values) == params.defaults()
        desc = node.describe_parameter("voxel_size")
        assert desc.floating_point_range[0].from_value == 0.005 and desc.description
        assert node.describe_parameter("checkpoint").read_only
        assert "SENSOR_DATA" in node.describe_parameter("input_qos").additional_constraints
        # ranges and choices are enforced on set
        assert not node.set_parameters([Parameter("voxel_size", value=5.0)])[0].successful
        result = node.set_parameters([Parameter("input_qos", value="FAST")])[0]
        assert not result.successful and "SENSOR_DATA" in result.reason
        assert node.set_parameters([Parameter("num_frames", value=8)])[0].successful
        assert not node.set_parameters([Parameter("checkpoint", value="/tmp")])[0].successful  # read-only
        assert params.read(node).num_frames == 8
    finally:
        node.destroy_node()


def test_bad_override_fails_at_declaration(ctx):
    node = rclpy.create_node("param_probe2", context=ctx,
                             parameter_overrides=[Parameter("map_eviction", value="random")])
    try:
        with pytest.raises(ValueError, match="map_eviction"):
            params.declare(node)
    finally:
        node.destroy_node()


def test_launch_file_compiles_and_exposes_the_arguments():
    import ast
    import py_compile

    path = REPO / "launch" / "reasoner.launch.py"
    py_compile.compile(str(path), doraise=True)  # never imported: launch/launch_ros are absent here
    declared = {node.args[0].value for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"}
    assert {"params_file", "namespace", "use_sim_time", "world_frame", "checkpoint", "device", "rviz",
            "rviz_config"} <= declared
    assert '"gs_reasoner.rviz"' in path.read_text() and 'executable="rviz2"' in path.read_text()


def test_rviz_config_shows_the_nodes_outputs():
    import yaml

    config = yaml.safe_load((REPO / "config" / "gs_reasoner.rviz").read_text())["Visualization Manager"]
    topics = {d["Class"]: d.get("Topic", {}).get("Value") for d in config["Displays"]}
    assert topics["rviz_default_plugins/PointCloud2"] == "/gs_reasoner/map_cloud"
    assert topics["rviz_default_plugins/MarkerArray"] == "/gs_reasoner/markers"
    assert topics["vision_msgs_rviz_plugins/Detection3DArray"] == "/gs_reasoner/detections"
    assert "rviz_default_plugins/TF" in topics and config["Global Options"]["Fixed Frame"] == "map"
    latched = [d["Topic"] for d in config["Displays"] if d.get("Topic")]
    assert all(t["Durability Policy"] == "Transient Local" for t in latched)  # the node latches them


def test_fastdds_profile_is_shipped_and_used_only_when_unset(tmp_path):
    import xml.etree.ElementTree as ET

    from gs_reasoner_ros.ros import dds

    root = ET.parse(dds.bundled_profile()).getroot()
    sizes = [int(e.text) for e in root.iter() if e.tag.endswith("segment_size")]
    assert sizes == [64 * 1024 * 1024]
    env = {}
    assert dds.use_bundled_fastdds_profile(env) == dds.bundled_profile() == env[dds.PROFILE_ENV]
    mine = {dds.PROFILE_ENV: str(tmp_path / "mine.xml")}
    assert dds.use_bundled_fastdds_profile(mine) is None and mine[dds.PROFILE_ENV].endswith("mine.xml")
