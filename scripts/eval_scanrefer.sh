#!/usr/bin/env bash
# scanrefer with the authors' settings (32 frames, greedy). Environment: CHECKPOINT, DATA (benchmark
# file), DATA_ROOT (processed-data scenes). Extra arguments are passed on (--limit N, --json, ...).
set -euo pipefail
: "${CHECKPOINT:?set CHECKPOINT to the model folder}" "${DATA:?set DATA to the scanrefer file}"
DATA_ROOT=${DATA_ROOT:-data/processed_data}
exec python -m gs_reasoner_ros.tools.cli eval --task scanrefer --checkpoint "$CHECKPOINT" --data "$DATA" \
  --data-root "$DATA_ROOT" --frames 32 --device "${DEVICE:-cuda}" --dtype "${DTYPE:-bfloat16}" "$@"
