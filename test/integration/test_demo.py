"""`gs-reasoner demo`, the README's main command, end to end: exits 0 and writes its outputs."""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rclpy")
from gs_reasoner_ros.visualization import read_ply  # noqa: E402


@pytest.mark.timeout(120)
def test_demo_runs_and_writes_the_picture_and_the_map(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "gs_reasoner_ros.tools.cli", "demo", "--output", str(out),
                           "--frames", "10", "--real-frames", "", "--checkpoint", "tiny", "--questions", "2"], capture_output=True, text=True, timeout=110)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "UNTRAINED" in log  # said plainly without a checkpoint
    assert log.count("~/ground 'the ") == 2 and "~/ask '" in log and "true furniture boxes" in log
    assert log.count("   IoU ") == 2 and "true answer: " in log  # returned box beside the true one
    assert "node stopped with SIGINT (exit status 0)" in log
    png = (out / "birds_eye.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    pts, cols = read_ply(out / "map.ply")
    n_reported = int(log.split("fused map: ")[1].split(" points")[0])
    assert len(pts) == n_reported > 10_000 and cols is not None
    # the generated room is 3.5-7 m x 3-6 m x 2.4-3 m with its floor at z = 0
    assert -0.05 < np.percentile(pts[:, 2], 1) < 0.1 and np.ptp(pts[:, 0]) < 7.1
