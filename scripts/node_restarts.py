"""Issue 19's shared-memory measurement: ROUNDS starts of a reasoner_node process (tiny model,
a DDS domain of its own), each brought up to active and then stopped, alternately with SIGINT
(clean) and SIGKILL (a crash); /dev/shm's FastDDS files counted before, after every round and at
the end (a last clean start and stop, which reclaims what the last crash left). Prints JSON.

    python scripts/node_restarts.py --rounds 100 [--domain 77]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gs_reasoner_ros.ros import dds  # noqa: E402
from gs_reasoner_ros.ros.harness import stop_process  # noqa: E402

SHM = "/dev/shm"


def fastdds_files() -> dict:
    """FastDDS files in /dev/shm: count, participants' segments and ports apart, and the memory
    they hold (tmpfs pages in use; a segment's size is 64 MB, mostly never touched)."""
    seg = port = 0
    size = 0
    for name in os.listdir(SHM):
        if not name.startswith(dds.PREFIX):
            continue
        try:
            size += os.lstat(os.path.join(SHM, name)).st_blocks * 512
        except OSError:
            continue
        if name.startswith(dds.PORT_PREFIX):
            port += 1
        else:
            seg += 1
    return {"files": seg + port, "segment_files": seg, "port_files": port, "mb": round(size / 2**20, 1)}


def start(log: Path, domain: int) -> tuple[subprocess.Popen, float]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gs_reasoner_ros.ros.process", "--ros-args",
                             "-p", "checkpoint:=tiny", "-p", f"export_root:={log.parent / 'exports'}"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, ROS_DOMAIN_ID=str(domain)))
    while "active: intake from" not in log.read_text():
        if proc.poll() is not None or time.monotonic() - t0 > 120.0:
            raise RuntimeError(f"the node did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, time.monotonic() - t0


def kill(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--domain", type=int, default=77)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="node_restarts_"))
    before = fastdds_files()
    rounds, codes = [], {"clean": [], "killed": []}
    for i in range(args.rounds):
        kind = "killed" if i % 2 else "clean"
        proc, up_s = start(folder / "node.log", args.domain)
        code = stop_process(proc, 15.0) if kind == "clean" else kill(proc)
        codes[kind].append(code)
        rounds.append(dict(round=i + 1, stop=kind, exit_code=code, up_s=round(up_s, 2), **fastdds_files()))
        print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    proc, _ = start(folder / "node.log", args.domain)  # reclaims what the last crash left
    last_code = stop_process(proc, 15.0)
    after = fastdds_files()
    summary = {"rounds": args.rounds, "before": before, "after": after, "after_last_clean_exit_code": last_code,
               "max_files_during": max(r["files"] for r in rounds), "max_mb_during": max(r["mb"] for r in rounds),
               "clean_exit_codes": sorted(set(codes["clean"])), "killed_exit_codes": sorted(set(codes["killed"])),
               "median_start_s": sorted(r["up_s"] for r in rounds)[len(rounds) // 2], "per_round": rounds}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
