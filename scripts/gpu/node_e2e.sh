#!/usr/bin/env bash
# The whole node on one GPU machine with no internet, in one call (issue 13):
#   1. installs the carried ROS 2 Kilted wheels (.e2e/whl, from scripts/gpu/node_e2e_prepare.sh)
#      into the image's Python 3.12 environment,
#   2. builds the interfaces there (scripts/build_interfaces.sh: rosidl + CMake + Ninja + g++),
#   3. writes random full-size bf16 weights in the release layout once (/tmp/gsr_weights),
#   4. runs `gs-reasoner bench node --json` for what is left of LIMIT_S (default 560 s, setup
#      included), and leaves the JSON, its log and the node's log under $OUT.
# Device call (from the repo root): OUT=$OUT bash scripts/gpu/node_e2e.sh   with carry [".e2e"]
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/node_e2e_out}
E2E=${E2E:-.e2e}
LIMIT_S=${LIMIT_S:-560}
WEIGHTS=${WEIGHTS:-/tmp/gsr_weights}
WORK=${WORK:-/tmp/gsr_bench_node}
cd "$(dirname "$0")/../.."
ROOT=$PWD
mkdir -p "$OUT"
log() { echo "[node_e2e $SECONDS s] $*" | tee -a "$OUT/steps.txt"; }
PY=$(command -v python3)
PREFIX=$("$PY" -c 'import sys; print(sys.prefix)')
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__)"
  for t in cmake ninja g++ gcc; do echo "$t: $(command -v $t || echo MISSING)"; done; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if ! "$PY" -c "import rclpy" 2>/dev/null; then
  log "installing $(ls "$E2E"/whl/*.whl | wc -l) wheels into $PREFIX"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$E2E"/whl/*.whl || { log "pip failed"; exit 1; }
fi
export AMENT_PREFIX_PATH=$PREFIX
if ! "$PY" -c "import tf2_msgs.msg, vision_msgs.msg, gs_reasoner_ros.srv, gs_reasoner_ros.action" 2>/dev/null; then
  log "building the interfaces for $("$PY" -V)"
  for what in tf2_msgs vision_msgs interfaces; do
    PYTHON=$PY JOBS=16 scripts/build_interfaces.sh "$PREFIX" "$what" || { cp build/*.log "$OUT/" 2>/dev/null; exit 1; }
  done
fi
export PYTHONPATH=$ROOT ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_LOG_DIR=$WORK/ros_log
"$PY" -c "import rclpy, gs_reasoner_ros.srv, tf2_msgs.msg; print('ROS ready')" || { log "ROS import failed"; exit 1; }

log "weights"
"$PY" -m gs_reasoner_ros.tools.bench.node weights "$WEIGHTS" 2>&1 | tail -3
frames=$E2E/rgbd_3dmatch
[ -d "$frames" ] || { frames=""; log "no $E2E/rgbd_3dmatch: synthetic frames only"; }
left=$((LIMIT_S - SECONDS))
log "bench node with ${left} s left"
"$PY" -m gs_reasoner_ros.tools.cli bench node --json --checkpoint "$WEIGHTS" --frames-dir "$frames" \
  --work-dir "$WORK" --budget-s "$left" > "$OUT/node_bench.json" 2> "$OUT/bench.log"
log "bench exit $?"
cp "$WORK/node.log" "$OUT/node.log" 2>/dev/null
cat "$WORK/camera.log" "$WORK/reasoner_only.log" > "$OUT/parts.log" 2>/dev/null
grep -v Warning "$OUT/bench.log" | tail -n 15
"$PY" - "$OUT/node_bench.json" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
r = json.loads(lines[-1]) if lines else {}
r.pop("samples", None)
print(json.dumps(r, indent=1, sort_keys=True))
PY
