#!/usr/bin/env bash
# Stage 1 (the authors' pretraining): grounding data, dual-path lr 1e-4, 16-48 random frames,
# global batch 16, bf16, gradient checkpointing. Extra arguments override the defaults
# (argparse keeps the last value), e.g.  scripts/train_pretrain.sh --max-steps 10 --lora
# Environment: CHECKPOINT (init weights), DATA (mixture YAML), DATA_ROOT (scenes), OUTPUT,
# NPROC (GPUs; >1 starts torchrun with FSDP).
set -euo pipefail
# NVLink multicast off (issue 8); the Python launcher sets these too.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
CHECKPOINT=${CHECKPOINT:-data/models/LLaVA-Video-7B-Qwen2-GSR-init}
DATA=${DATA:-scripts/train_multi_pretrain.yaml}
DATA_ROOT=${DATA_ROOT:-data/processed_data}
OUTPUT=${OUTPUT:-ckpt/gs-reasoner-pretrain}
NPROC=${NPROC:-1}
args=(train --stage pretrain --checkpoint "$CHECKPOINT" --data "$DATA" --data-root "$DATA_ROOT" --output "$OUTPUT"
      --lr 1e-5 --dual-path-lr 1e-4 --global-batch 16 --frames 16 48 --warmup-ratio 0.03 --epochs 1
      --save-steps 500 --bf16 --gradient-checkpointing)
if [ "$NPROC" -gt 1 ]; then
  exec torchrun --standalone --nproc-per-node "$NPROC" -m gs_reasoner_ros.tools.cli "${args[@]}" "$@"
fi
exec python -m gs_reasoner_ros.tools.cli "${args[@]}" "$@"
