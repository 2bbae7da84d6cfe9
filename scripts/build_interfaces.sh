#!/usr/bin/env bash
# Builds the ROS interfaces against the ROS 2 wheels installed in PREFIX (a venv, or any Python
# environment the wheels were installed into) with rosidl + CMake + Ninja:
#   scripts/build_interfaces.sh PREFIX tf2_msgs     vendored tf2_msgs/TFMessage, installed into PREFIX
#   scripts/build_interfaces.sh PREFIX vision_msgs  vendored vision_msgs (Detection3DArray), into PREFIX
#   scripts/build_interfaces.sh PREFIX interfaces   gs_reasoner_ros msg/srv/action; the generated Python
#                                                    goes into the source package (git-ignored)
# install.sh and scripts/gpu/node_e2e.sh (the GPU machine, Python 3.12) both use it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PREFIX=$1
PY=${PYTHON:-$PREFIX/bin/python}
JOBS=${JOBS:-2}
export AMENT_PREFIX_PATH=$PREFIX CMAKE_PREFIX_PATH=$PREFIX
build() {  # $1 source dir, $2 build dir, extra cmake args...
  local src=$1 bld=$2; shift 2
  mkdir -p "$(dirname "$bld")"
  cmake -S "$src" -B "$bld" -G Ninja -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF "$@" > "$bld.log" 2>&1 \
    && cmake --build "$bld" -j"$JOBS" >> "$bld.log" 2>&1 \
    && cmake --install "$bld" >> "$bld.log" 2>&1 \
    || { echo "building interfaces in $src failed; see $bld.log"; tail -20 "$bld.log"; exit 1; }
}
case ${2:-} in
  tf2_msgs) build third_party/tf2_msgs build/tf2_msgs ;;
  vision_msgs) build third_party/vision_msgs build/vision_msgs ;;
  interfaces)
    rm -rf build/python
    build . build/gs_reasoner_ros -DGSR_INTERFACES_ONLY=ON -DPYTHON_INSTALL_DIR="$ROOT/build/python"
    # Generated Python goes into the source package (git-ignored), so that an editable install
    # (or PYTHONPATH=ROOT) serves both the code and gs_reasoner_ros.msg / .srv / .action.
    rm -rf gs_reasoner_ros/msg gs_reasoner_ros/srv gs_reasoner_ros/action gs_reasoner_ros/*.so
    cp -r build/python/gs_reasoner_ros/msg build/python/gs_reasoner_ros/srv build/python/gs_reasoner_ros/action \
      build/python/gs_reasoner_ros/*.so gs_reasoner_ros/
    rm -f gs_reasoner_ros/msg/*.c gs_reasoner_ros/srv/*.c gs_reasoner_ros/action/*.c ;;
  *) echo "usage: $0 PREFIX tf2_msgs|vision_msgs|interfaces"; exit 2 ;;
esac
