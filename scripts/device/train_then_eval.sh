#!/usr/bin/env bash
# GPU 0 job of block1.sh: train (stage 1, save, stage 2, save), then evaluate both artifacts.
#   train_then_eval.sh HEAD_PLAN.json
M=${M:-$HOME/m}
MODEL=${MODEL:-$M/SmolLM2-135M-Instruct.Q4_1.gguf}  # the embedded file's name: same base fingerprint
python3 scripts/train_gpu.py --model "$MODEL" --data "$M/train/train-data" --dev "$M/train/dev-data" \
  --plan "$1" --out "$M/out/train" --checkpoint-dir "$M/ckpt" --save-stage1 \
  --indexer-time-budget "${STAGE1_SECONDS:-240}" --distill-time-budget "${STAGE2_SECONDS:-600}" "${@:2}" || exit
lengths=(${LENGTHS:-2048 4096 8192})
for len in "${lengths[@]}"; do
  ppl=0; [ "$len" = "${lengths[-1]}" ] && ppl=${PPL_WINDOWS:-12}
  python3 -m rtpurbo.cli eval --model "$MODEL" --data "$M/eval/eval_data.npz" --rows \
    --artifacts "stage1=$M/out/train/artifact-stage1" "stage2=$M/out/train/artifact" --speed-repeats 0 \
    --lengths "$len" --ppl-windows "$ppl" --out "$M/out/eval-trained-$len" &
done
wait
