#!/usr/bin/env bash
# Device call 2 of the SmolLM2 GPU session (nvidia-h200-x2; call 1 ran `setup.sh stash`):
# assemble the model, then start in the background
#   GPU 0: stage 1 + stage 2 training (scripts/train_gpu.py), then the trained rows of `rtpurbo eval`;
#   GPU 1: the base rows of `rtpurbo eval` (dense, StreamingLLM-style, training-free split), one
#          process per row and length (a 135M model leaves the GPU idle between kernels), and the
#          ablations (ablations.sh; its trainings start once the stage-1 artifact exists).
# and watch them for WAIT seconds. Later calls: `scripts/device/wait.sh SECONDS`.
set -u
source scripts/device/setup.sh assemble
M=${M:-$HOME/m}
plan=$M/plans/r15.json
[ -s "$plan" ] || plan=$M/train/head_plan.json
echo "head plan: $plan"
common=(--model "$MODEL" --data "$M/eval/eval_data.npz" --plan "$plan" --window 1024 --sinks 4
        --speed-repeats 0)
scripts/device/launch.sh train 0 bash scripts/device/train_then_eval.sh "$plan" ${TRAIN_FLAGS:-}
lengths=(${LENGTHS:-2048 4096 8192})
for row in dense streaming split; do
  for len in "${lengths[@]}"; do
    ppl=0; [ "$len" = "${lengths[-1]}" ] && ppl=${PPL_WINDOWS:-12}
    scripts/device/launch.sh "eval-$row-$len" 1 python3 -m rtpurbo.cli eval "${common[@]}" --rows "$row" \
      --top-p 1 --lengths "$len" --ppl-windows "$ppl" --out "$M/out/eval-$row-$len"
  done
done
scripts/device/launch.sh ablations 1 bash scripts/device/ablations.sh
scripts/device/wait.sh "${WAIT:-530}" 60
