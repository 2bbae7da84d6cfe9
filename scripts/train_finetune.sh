#!/usr/bin/env bash
# Stage 2 (the authors' finetuning): grounding end:10% + ScanQA/SQA3D/Scan2Cap + GCoT, one lr 1e-5,
# 32 frames, global batch 256, bf16, gradient checkpointing. Extra arguments override the
# defaults, e.g.  scripts/train_finetune.sh --lora --global-batch 16   (one 24-48 GB GPU)
# Environment: CHECKPOINT (the pretrain output), DATA, DATA_ROOT, OUTPUT, NPROC (GPUs; >1 = torchrun, FSDP).
set -euo pipefail
# NVLink multicast off (issue 8); the Python launcher sets these too.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
CHECKPOINT=${CHECKPOINT:-ckpt/gs-reasoner-pretrain}
DATA=${DATA:-scripts/train_multi_finetune.yaml}
DATA_ROOT=${DATA_ROOT:-data/processed_data}
OUTPUT=${OUTPUT:-ckpt/gs-reasoner-finetune}
NPROC=${NPROC:-1}
args=(train --stage finetune --checkpoint "$CHECKPOINT" --data "$DATA" --data-root "$DATA_ROOT" --output "$OUTPUT"
      --lr 1e-5 --dual-path-lr 1e-5 --global-batch 256 --frames 32 --warmup-ratio 0.03 --epochs 1
      --save-steps 50 --bf16 --gradient-checkpointing)
if [ "$NPROC" -gt 1 ]; then
  exec torchrun --standalone --nproc-per-node "$NPROC" -m gs_reasoner_ros.tools.cli "${args[@]}" "$@"
fi
exec python -m gs_reasoner_ros.tools.cli "${args[@]}" "$@"
