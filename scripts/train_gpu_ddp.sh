#!/usr/bin/env bash
# Issue #4, scale-out: the same stage-2 run (same global batch of 2 x 8K sequences per step, same
# data order) under torchrun on 1 and then 2 GPUs; compares loss curves and tokens/s.
#
#   scripts/train_gpu_ddp.sh MODEL.gguf TRAIN_SHARDS HEAD_PLAN.json|STAGE1_ARTIFACT_DIR [STEPS (default 100)]
#
# Writes to $OUT (default runs/gpu-ddp): ddp.log, gpu1/distill_report.json,
# gpu2/distill_report.json, scaling.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu-ddp}
steps=${4:-100}
mkdir -p "$out"
export TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1
start=(--plan "$3"); [ -d "$3" ] && start=(--from-artifact "$3")
common=(--model "$1" --data "$2" "${start[@]}" --stage2-only --no-eval --no-save --distill-steps "$steps"
        --distill-batch-size 2 --distill-time-budget 150)
{
  for n in 1 2; do
    python3 -m torch.distributed.run --standalone --nproc_per_node "$n" scripts/train_gpu.py "${common[@]}" \
      --out "$out/gpu$n" --checkpoint-dir "/tmp/rtpurbo-ddp$n"
  done
  python3 scripts/compare_scaling.py "$out/gpu1/distill_report.json" "$out/gpu2/distill_report.json" \
    | tee "$out/scaling.json"
} 2>&1 | tee "$out/ddp.log"
