#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-11-28_scaling.md: stage 2 of SmolLM2-135M on 1 and 2 GPUs
# under torchrun (DDP), same global batch of 2 x 8K sequences, from one stage-1 artifact; then the 2-GPU artifact
# evaluated like the shipped adapter. Card: 2 x NVIDIA H200 (about 25 minutes).
# Needs the train / dev shards, plans and eval items of smollm2-135m_h200_2026-11-28_adaptation.sh (same OUT)
# and its stage-1 artifact.
set -euo pipefail
OUT=${OUT:-runs/adaptation}
STAGE1=${STAGE1:-$OUT/train/artifact-stage1}
export NCCL_NVLS_ENABLE=0  # NVLink multicast off
train=(scripts/train_gpu.py --model smollm2-135m --data "$OUT/train-data" --dev "$OUT/dev-data"
       --from-artifact "$STAGE1" --distill-batch-size 2 --no-gradient-checkpointing)
# run A: 1 GPU, the 300-step schedule, stopped by its time budget (throughput only)
CUDA_VISIBLE_DEVICES=0 torchrun --standalone --nproc_per_node 1 "${train[@]}" --distill-steps 300 \
  --distill-time-budget 150 --no-eval --no-save --out "$OUT/scaling/gpu1"
# run C: 2 GPUs, 300 steps of 2 x 8K sequences, evaluated
torchrun --standalone --nproc_per_node 2 "${train[@]}" --distill-steps 300 --distill-time-budget 600 \
  --eval-windows 4 --out "$OUT/scaling/gpu2"
python3 scripts/compare_scaling.py "$OUT/scaling/gpu1/distill_report.json" "$OUT/scaling/gpu2/distill_report.json" \
  > "$OUT/scaling/scaling.json"
for len in 2048 4096 8192; do
  ppl=0; [ "$len" = 8192 ] && ppl=12
  rtpurbo eval --data "$OUT/eval-data/eval_data.npz" --rows --artifacts "stage2-ddp=$OUT/scaling/gpu2/artifact" \
    --speed-repeats 0 --lengths "$len" --ppl-windows "$ppl" --out "$OUT/scaling/eval-$len"
done
