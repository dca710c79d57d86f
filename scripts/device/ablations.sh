#!/usr/bin/env bash
# GPU 1 job of the SmolLM2 session (issue #7 ablations), beside the base rows of block1.sh:
#   1. training-free split at 8K: W 512 / 2048 at 15 %, and 10 % / 25 % retrieval at W 1024;
#   2. stage 2 from the shared stage-1 artifact with --trainable lora / attention / all, ABL_STEPS steps each;
#   3. top-p of the trained (stage-2, LoRA) artifact: 0.8 / 0.95 / 0.99 (0.9 is its default row).
# Ablation rows use ABL_SAMPLES samples of the retrieval-style tasks at 8K (PLANS: dir of plan files
# r10.json r15.json r25.json made from one profile).
M=${M:-$HOME/m}
MODEL=${MODEL:-$M/SmolLM2-135M-Instruct.Q4_1.gguf}  # the embedded file's name: same base fingerprint
plans=${PLANS:-$M/plans}
n=${ABL_SAMPLES:-50}
len=${ABL_LENGTH:-8192}
tasks=(${ABL_TASKS:-niah_number niah_multikey niah_multiquery variable_tracking doc_qa code_function})
common=(--model "$MODEL" --data "$M/eval/eval_data.npz" --lengths "$len" --samples "$n" --tasks "${tasks[@]}"
        --speed-repeats 0 --ppl-windows "${ABL_PPL_WINDOWS:-6}" --sinks 4)
run_split() {  # NAME WINDOW PLAN
  python3 -m rtpurbo.cli eval "${common[@]}" --rows split --top-p 1 --window "$2" --plan "$3" --out "$M/out/abl-$1"
}
run_split w512 512 "$plans/r15.json" &
run_split w2048 2048 "$plans/r15.json" &
run_split r10 1024 "$plans/r10.json" &
run_split r25 1024 "$plans/r25.json" &

wait_for() {  # FILE: poll until it exists, or give up when training ended without it
  until [ -s "$1" ]; do
    [ -e "$M/logs/train.rc" ] && [ ! -s "$1" ] && { echo "gave up waiting for $1"; return 1; }
    sleep 15
  done
}
if wait_for "$M/out/train/artifact-stage1/rtpurbo_config.json"; then
  for set in lora attention all; do
    ( python3 scripts/train_gpu.py --model "$MODEL" --data "$M/train/train-data" --dev "$M/train/dev-data" \
        --from-artifact "$M/out/train/artifact-stage1" --trainable "$set" --out "$M/out/train-$set" \
        --checkpoint-dir "$M/ckpt-$set" --distill-steps "${ABL_STEPS:-200}" --distill-time-budget 1500 \
        --eval-windows 2 "${@}" &&
      python3 -m rtpurbo.cli eval "${common[@]}" --rows --artifacts "stage2-$set=$M/out/train-$set/artifact" \
        --out "$M/out/abl-train-$set" ) &
  done
fi
if wait_for "$M/out/train/artifact/rtpurbo_config.json"; then
  a=$M/out/train/artifact
  python3 -m rtpurbo.cli eval "${common[@]}" --rows --artifacts "p0.8=$a@0.8" "p0.95=$a@0.95" "p0.99=$a@0.99" \
    "p0.9=$a@0.9" --out "$M/out/abl-topp"
fi
wait
