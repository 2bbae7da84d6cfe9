"""The package's layering, checked on its source: no import circle, ROS only in ros/ (and the
tools that start ROS processes), every module in ros/ touching ROS, and no production module
importing the test fixtures. Imports inside functions count too: a lazy import is still a
dependency, it only moves the cost."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "gs_reasoner_ros"
ROS_PACKAGES = {"rclpy", "rcl_interfaces", "sensor_msgs", "std_msgs", "geometry_msgs", "builtin_interfaces",
                "tf2_msgs", "tf2_ros", "visualization_msgs", "diagnostic_msgs", "std_srvs", "rosgraph_msgs",
                "vision_msgs", "message_filters", "lifecycle_msgs", "action_msgs"}
GENERATED = {"gs_reasoner_ros.msg", "gs_reasoner_ros.srv", "gs_reasoner_ros.action"}  # rosidl output
# Tools that start and drive ROS processes (the node, a camera, a planner) may use ROS.
ROS_TOOLS = {"gs_reasoner_ros.tools.demo", "gs_reasoner_ros.tools.soak", "gs_reasoner_ros.tools.cli",
             "gs_reasoner_ros.tools.replay", "gs_reasoner_ros.tools.demo_eval",
             # `gs-reasoner bench node` starts the node, a camera and a planner over DDS
             "gs_reasoner_ros.tools.bench", "gs_reasoner_ros.tools.bench.node",
             "gs_reasoner_ros.tools.bench.node_replay"}
# The planners' import name for the ROS client (a re-export of gs_reasoner_ros.ros.client): it is
# ROS by purpose, so it may import the ros layer and nothing else may import it.
ROS_FACADES = {"gs_reasoner_ros.client"}
FIXTURES = {"gs_reasoner_ros.synthetic", "gs_reasoner_ros.scripted"}
# Production code: what the node and the offline library run (not tools, not fixtures' users).
PRODUCTION = ("gs_reasoner_ros.pipeline", "gs_reasoner_ros.scene_memory", "gs_reasoner_ros.model",
              "gs_reasoner_ros.ros.node", "gs_reasoner_ros.reasoner", "gs_reasoner_ros.reasoning",
              "gs_reasoner_ros.geometry", "gs_reasoner_ros.scene", "gs_reasoner_ros.questions")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")
            if not any(g.split(".")[-1] in p.parts for g in GENERATED)}


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of everything `path` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            out |= {f"{base}.{a.name}" for a in node.names}  # a module, or a name in `base`
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imports(name, path):
            while imported and imported not in modules:  # `from pkg import name`: the module is pkg
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def _ros_imports(name: str) -> set[str]:
    imports = _imports(name, _modules()[name])
    return {i for i in imports if i.split(".")[0] in ROS_PACKAGES or any(i.startswith(g) for g in GENERATED)}


def _in_ros_layer(name: str) -> bool:
    return name.startswith("gs_reasoner_ros.ros") or name in ROS_TOOLS or name in ROS_FACADES


def test_no_import_circle():
    graph, state, circles = _graph(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_ros_only_in_the_ros_layer():
    graph = _graph()
    offenders = {}
    for name in graph:
        if _in_ros_layer(name):
            continue
        direct = _ros_imports(name)
        via = {d for d in graph[name] if _in_ros_layer(d)}
        if direct or via:
            offenders[name] = sorted(direct | via)
    assert not offenders, offenders


def test_every_ros_module_imports_ros():
    missing = [n for n, p in _modules().items()
               if n.startswith("gs_reasoner_ros.ros") and p.name != "__init__.py" and not _ros_imports(n)]
    assert not missing, f"modules in ros/ that touch no ROS (they belong in a ROS-free package): {missing}"


def test_production_code_never_imports_fixtures():
    graph = _graph()
    closure = {}

    def reach(m):
        if m not in closure:
            closure[m] = set()
            for d in graph[m]:
                closure[m] |= {d} | reach(d)
        return closure[m]

    offenders = {m: sorted(reach(m) & FIXTURES) for m in graph if m.startswith(PRODUCTION) and reach(m) & FIXTURES}
    assert not offenders, offenders


def test_the_check_sees_imports():
    """The checks above would pass vacuously if the parser found nothing."""
    graph = _graph()
    assert "gs_reasoner_ros.pipeline.intake" in graph["gs_reasoner_ros.ros.node"]
    assert "rclpy" in {i.split(".")[0] for i in _imports("gs_reasoner_ros.ros.node", _modules()["gs_reasoner_ros.ros.node"])}
    assert "gs_reasoner_ros.geometry" in graph["gs_reasoner_ros.pipeline.queries"]


def test_the_pipeline_runs_without_ros():
    """Importing the ROS-free packages loads no ROS module (checked in a fresh interpreter)."""
    code = ("import sys; import gs_reasoner_ros.pipeline.intake, gs_reasoner_ros.pipeline.queries, "
            "gs_reasoner_ros.pipeline.query_worker, gs_reasoner_ros.pipeline.tf_tree, "
            "gs_reasoner_ros.pipeline.sync_matcher, gs_reasoner_ros.pipeline.export, gs_reasoner_ros.scene_memory, "
            "gs_reasoner_ros.reasoner; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % sorted(ROS_PACKAGES))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
