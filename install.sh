#!/usr/bin/env bash
# Installs everything gs_reasoner_ros needs into .venv at the repository root:
# the ROS 2 Kilted wheels, torch (CPU) and the ML libraries, the interfaces (built with
# rosidl + CMake), and this package (editable). Idempotent: each step is skipped when
# its inputs have not changed since it last succeeded.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv
STATE=$VENV/.gsr-install
log() { printf '[install] %s\n' "$*"; }
digest() { cat "$@" | sha256sum | cut -c1-16; }
step_done() { [ "$(cat "$STATE/$1" 2>/dev/null)" = "$2" ]; }
mark_done() { mkdir -p "$STATE"; echo "$2" > "$STATE/$1"; }

python3 - <<'PY' || { echo "install.sh needs CPython 3.10-3.13 on x86_64 (the ROS 2 wheels exist only there)"; exit 1; }
import platform, sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) and platform.machine() == "x86_64" else 1)
PY
for tool in cmake ninja g++; do
  command -v "$tool" >/dev/null || { echo "install.sh needs $tool: apt-get install cmake ninja-build g++"; exit 1; }
done

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

key=$(digest requirements/*.txt)
if ! step_done wheels "$key"; then
  log "installing wheels (ROS 2 Kilted, torch CPU, transformers, test tools)"
  pip install -q -r requirements/ros.txt -c requirements/ros-constraints.txt -r requirements/ml.txt 2> >(grep -v "is ignored: it is neither" >&2)
  mark_done wheels "$key"
fi

key=$(digest third_party/tf2_msgs/CMakeLists.txt third_party/tf2_msgs/package.xml third_party/tf2_msgs/msg/* cmake/*)
if ! step_done tf2_msgs "$key"; then
  log "building tf2_msgs/TFMessage for the wheel environment"
  scripts/build_interfaces.sh "$VENV" tf2_msgs
  mark_done tf2_msgs "$key"
fi
key=$(digest third_party/vision_msgs/CMakeLists.txt third_party/vision_msgs/package.xml third_party/vision_msgs/msg/* cmake/*)
if ! step_done vision_msgs "$key"; then
  log "building vision_msgs/Detection3DArray for the wheel environment"
  scripts/build_interfaces.sh "$VENV" vision_msgs
  mark_done vision_msgs "$key"
fi
key=$(digest CMakeLists.txt package.xml msg/* srv/* action/* cmake/*)
if ! step_done interfaces "$key" || [ ! -f gs_reasoner_ros/msg/__init__.py ] || [ ! -f gs_reasoner_ros/action/__init__.py ]; then
  log "building gs_reasoner_ros interfaces (rosidl)"
  scripts/build_interfaces.sh "$VENV" interfaces
  mark_done interfaces "$key"
fi

key=$(digest setup.py pyproject.toml)
if ! step_done package "$key"; then
  log "installing gs_reasoner_ros (editable)"
  pip install -q --no-build-isolation --no-deps -e . 2> >(grep -v "is ignored: it is neither" >&2)
  mark_done package "$key"
fi
log "ready: . .venv/bin/activate"
