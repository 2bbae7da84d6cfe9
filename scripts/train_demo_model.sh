#!/usr/bin/env bash
# Reproduce the demo model (gs_reasoner_ros/models/demo) from nothing: generated rooms recorded as
# the node records them, grounding pre-training, fine-tuning on the mixture, held-out scores
# against the untrained start, learning curves (CSV + PNG) and scores (JSON).
#
#   scripts/train_demo_model.sh OUT [--gpu | --cpu-small] [extra demo_recipe flags...]
#
#   --gpu        one GPU, sized for ~9 minutes wall on one H100: 600 rooms, 2 stages of at most
#                2.5 minutes each (bf16), 12 data-loading processes, eval on 10 held-out rooms
#                (the 50-room node evaluation is tools/demo_eval.py, on CPU afterwards).
#   --cpu-small  a smoke run on a few CPU cores: 16 rooms, 60 + 30 steps of 4-frame samples.
#   (default)    the recipe's own defaults (400 rooms, 1500 + 1000 steps, batch 8, 16-24 frames).
#
# Add --install to copy the weights, curves and scores into gs_reasoner_ros/models/demo.
set -euo pipefail
OUT=${1:?usage: scripts/train_demo_model.sh OUT [--gpu|--cpu-small] [flags]}
shift
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
PRESET=()
if [[ "${1:-}" == "--gpu" ]]; then
  shift
  PRESET=(--device cuda --bf16 --train-rooms 600 --data-workers 14 --workers 12 --global-batch 8
          --pretrain-steps 2000 --finetune-steps 1500 --stage-minutes 2.5 --frames 16 24 --eval-rooms 10
          --eval-max-new-tokens 120)
elif [[ "${1:-}" == "--cpu-small" ]]; then
  shift
  PRESET=(--device cpu --train-rooms 16 --eval-rooms 2 --pretrain-steps 60 --finetune-steps 30
          --global-batch 1 --frames 4 4 --eval-max-new-tokens 80)
fi
cd "$HERE"
exec env PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m gs_reasoner_ros.training.demo_recipe \
  --out "$OUT" "${PRESET[@]}" "$@"
