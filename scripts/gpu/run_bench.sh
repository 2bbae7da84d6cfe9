#!/bin/bash
# One call on the GPU machine: the language-model bench with decode variants and the correctness
# check, the kernel profile, the full end-to-end bench, the product path (Reasoner with caches and
# warm-up: STEPS=product), and the mapping bench. Everything lands in
# $OUT/results.tgz (the device tool returns at most 8 files); a digest goes to stdout.
#   OUT=/tmp/o bash scripts/gpu/run_bench.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_out}
RES=$(mktemp -d)
cd "$(dirname "$0")/../.."
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
  > "$RES/env.txt" 2>&1
step() {  # name timeout command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$RES/$name.out" 2> "$RES/$name.log"
  echo "== $name rc=$? $((SECONDS - t0)) s" | tee -a "$RES/steps.txt"
}
STEPS=${STEPS:-llm prof full mapping}
DECODE=${DECODE:-compile}
for s in $STEPS; do case $s in
  llm) step llm "${T_LLM:-240}" python3 -m gs_reasoner_ros.tools.cli bench gpu --llm-only --check --decode "$DECODE" \
         --variants "${VARIANTS:-eager,compile,graph-sdpa,reduce-overhead}" ${LLM_ARGS:-} --json ;;
  prof) step prof "${T_PROF:-110}" python3 scripts/gpu/profile_llm.py --out "$RES/prof" ;;
  vision) step vision "${T_VIS:-60}" python3 scripts/gpu/profile_vision.py --out "$RES/vision" ;;
  product) step product "${T_PROD:-480}" python3 -m gs_reasoner_ros.tools.cli bench gpu --path "${PATH_MODE:-product}" \
         ${PROD_ARGS:-} --json ;;
  full) step full "${T_FULL:-170}" python3 -m gs_reasoner_ros.tools.cli bench gpu --check --decode "$DECODE" --json ;;
  mapping) step mapping "${T_MAP:-40}" python3 -m gs_reasoner_ros.tools.cli bench mapping --json ;;
esac; done
tar czf "$OUT/results.tgz" -C "$RES" .
cat "$RES/env.txt" "$RES/steps.txt"
for f in $STEPS; do echo "---- $f"; grep -v Warning "$RES/$f.log" | tail -n 12; tail -c 2500 "$RES/$f.out"; echo; done
