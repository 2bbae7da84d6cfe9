"""A broken checkpoint folder fails configure with a message naming the file; the node stays up
and says so on /diagnostics and in every service answer, and configures once the folder is fixed.
Checkpoints never run code: a malicious pickle is refused."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from gs_reasoner_ros.model import GSReasonerForCausalLM  # noqa: E402
from gs_reasoner_ros.reasoner import Reasoner, tiny_checkpoint_dir  # noqa: E402
from gs_reasoner_ros.ros import harness  # noqa: E402
from gs_reasoner_ros.ros.node import ReasonerNode  # noqa: E402


@pytest.fixture(scope="module")
def good():
    return Path(tiny_checkpoint_dir(0))


def _copy(good, tmp_path, name="ckpt"):
    folder = tmp_path / name
    shutil.copytree(good, folder)
    return folder


def truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


def _sharded(good, tmp_path):
    folder = _copy(good, tmp_path)
    Reasoner.load(str(good)).model.save_pretrained(folder, max_shard_size=4_000_000)
    (folder / "model.safetensors").unlink()
    shard = sorted(folder.glob("model-0000*-of-*.safetensors"))[1]
    shard.unlink()
    return folder, shard.name


BREAKAGES = {
    "truncated safetensors": (lambda f: truncate(f / "model.safetensors", lambda n: n // 2), "model.safetensors"),
    "truncated header": (lambda f: truncate(f / "model.safetensors", lambda n: 5), "model.safetensors"),
    "missing config.json": (lambda f: (f / "config.json").unlink(), "config.json"),
    "corrupt config.json": (lambda f: (f / "config.json").write_text('{"hidden_size": '), "config.json"),
    "missing tokenizer": (lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
                          "tokenizer"),
    "corrupt tokenizer": (lambda f: (f / "tokenizer.json").write_text("{"), "tokenizer.json"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_folder_is_a_value_error_naming_the_file(good, tmp_path, breakage):
    folder = _copy(good, tmp_path)
    damage, name = BREAKAGES[breakage]
    damage(folder)
    with pytest.raises(ValueError) as err:
        Reasoner.load(str(folder))
    assert name in str(err.value) and str(folder) in str(err.value)


def test_a_missing_shard_is_named(good, tmp_path):
    folder, shard = _sharded(good, tmp_path)
    with pytest.raises(ValueError, match=shard):
        Reasoner.load(str(folder))


def test_a_malicious_pickle_is_refused_without_running(tmp_path, good):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(good / "config.json", folder)
    torch.save({"model.norm.weight": Payload()}, folder / "pytorch_model.bin")
    torch.load(folder / "pytorch_model.bin", weights_only=False)  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match="refusing to load.*weights_only=True"):
        GSReasonerForCausalLM.from_pretrained(folder)
    assert not marker.exists()


# ---- the node --------------------------------------------------------------------------

class Probe(harness.Probe):
    def __init__(self, ctx):
        super().__init__(ctx, name="ckpt_probe")

    def model_status(self):
        if self.diag_msg is None:
            return None
        return next(s for s in self.diag_msg.status if s.name.endswith(": model"))

    def every_service_says(self, text):
        answers = [self.call("ask", question="where?"), self.call("ground", description="it"),
                   self.call("clear"), self.call("export_scene", name="x")]
        return all(not a.success and text in a.message for a in answers), [a.message for a in answers]


def test_node_stays_up_reports_and_configures_once_fixed(good, tmp_path):
    folder = _copy(good, tmp_path)
    weights = folder / "model.safetensors"
    intact = weights.read_bytes()
    truncate(weights, lambda n: n // 3)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = ReasonerNode(context=ctx, parameter_overrides=[Parameter("checkpoint", value=str(folder)),
                                                          Parameter("diagnostics_period_s", value=0.2)])
    probe = Probe(ctx)
    probe.executor.add_node(node)
    try:
        assert node.state == "unconfigured"
        ok, messages = probe.every_service_says(str(weights))
        assert ok, messages
        assert probe.spin_until(lambda: probe.model_status() is not None)
        status = probe.model_status()
        assert status.level == DiagnosticStatus.ERROR and str(weights) in status.message
        weights.write_bytes(intact)  # the operator fixes the folder and configures again
        node.trigger_configure()
        node.trigger_activate()
        assert node.state == "active"
        assert probe.spin_until(lambda: "configure failed" not in probe.model_status().message, 5.0)
        resp = probe.call("ask", question="where?")
        assert not resp.success and "no keyframes yet" in resp.message  # configured: only the map is empty
    finally:
        node.stop()
        probe.close()
        node.destroy_node()
        ctx.try_shutdown()


@pytest.mark.timeout(60)
def test_node_process_does_not_exit_on_a_broken_checkpoint(good, tmp_path):
    folder = _copy(good, tmp_path)
    (folder / "config.json").unlink()
    proc = subprocess.Popen([sys.executable, "-m", "gs_reasoner_ros.ros.process", "--ros-args", "-p",
                             f"checkpoint:={folder}", "-p", "diagnostics_period_s:=0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    probe = Probe(ctx)
    try:
        assert probe.spin_until(lambda: probe.model_status() is not None, 30.0), "no /diagnostics"
        assert proc.poll() is None
        assert probe.model_status().level == DiagnosticStatus.ERROR
        assert "config.json" in probe.model_status().message
        resp = probe.call("ask", question="where?")
        assert not resp.success and f"{folder}: no config.json" in resp.message
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10.0) == 0 and time.monotonic() - t0 < 2.0
        log = proc.stdout.read()
        assert "no config.json" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.close()
        ctx.try_shutdown()


def test_inconsistent_parameters_keep_the_node_up_too(tmp_path):
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = ReasonerNode(context=ctx, reasoner_factory=lambda p: pytest.fail("the model must not load"),
                        parameter_overrides=[Parameter("keyframe_min_interval_s", value=10.0),
                                             Parameter("keyframe_max_interval_s", value=1.0)])
    probe = Probe(ctx)
    probe.executor.add_node(node)
    try:
        assert node.state == "unconfigured"
        ok, messages = probe.every_service_says("max_interval_s")
        assert ok, messages
    finally:
        node.stop()
        probe.close()
        node.destroy_node()
        ctx.try_shutdown()


def test_checkpoint_config_json_is_not_a_code_path(good, tmp_path):
    """config.json is data: an auto_map / trust_remote_code entry is ignored, nothing imported."""
    folder = _copy(good, tmp_path)
    (folder / "evil_module.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil_module.Model", "AutoTokenizer": "evil_module.Tok"}
    (folder / "config.json").write_text(json.dumps(config))
    Reasoner.load(str(folder))
    assert not (tmp_path / "imported").exists()
