#!/usr/bin/env bash
# Runs the whole test suite (installing into .venv first when needed).
# Extra arguments go to pytest, e.g. ./test.sh -k geometry -x
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
. .venv/bin/activate
# Keep DDS traffic on this machine and ROS logs out of ~/.ros.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOG_DIR=${ROS_LOG_DIR:-$(mktemp -d)}
exec python -m pytest "$@"
