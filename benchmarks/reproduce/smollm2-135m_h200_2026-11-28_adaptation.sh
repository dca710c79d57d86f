#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-11-28_adaptation.md (and its _eval/, _training/ and
# _ablations/ folders): the embedded SmolLM2-135M profiled, converted (W = 1024, S = 4, 15 % retrieval KV heads),
# trained (stage 1 + stage 2) and evaluated against dense, StreamingLLM-style and training-free rows.
# Card: 2 x NVIDIA H200 (GPU 0 trains then evaluates the trained rows, GPU 1 evaluates the base rows and the
# ablations; about 30 minutes). The data steps run on a CPU too and install the pool sources they read.
set -euo pipefail
OUT=${OUT:-runs/adaptation}
mkdir -p "$OUT"

# data, plans and eval items (no GPU needed)
rtpurbo data prepare --pool train --seq-len 8192 --sequences 1024 --out "$OUT/train-data"
# the original dev shard count is not recorded; 64 sequences cover the 12 perplexity windows the report uses
rtpurbo data prepare --pool dev --seq-len 8192 --sequences 64 --out "$OUT/dev-data"
rtpurbo profile --window 1024 --out "$OUT/profile"
python3 scripts/plans_from_scores.py "$OUT/profile/head_scores.json" "$OUT/plans" 0.10 0.15 0.25
rtpurbo eval --prepare-only --lengths 2048 4096 8192 --samples 100 --out "$OUT/eval-data"
data=(--data "$OUT/eval-data/eval_data.npz" --speed-repeats 0 --sinks 4)

# GPU 0: stage 1 (240 s) + stage 2 (600 s), then the trained rows
(
  export CUDA_VISIBLE_DEVICES=0
  python3 scripts/train_gpu.py --model smollm2-135m --data "$OUT/train-data" --dev "$OUT/dev-data" \
    --plan "$OUT/plans/r15.json" --out "$OUT/train" --save-stage1 --indexer-time-budget 240 --distill-time-budget 600
  rtpurbo eval "${data[@]}" --rows --artifacts "stage1=$OUT/train/artifact-stage1" "stage2=$OUT/train/artifact" \
    --ppl-windows 12 --out "$OUT/eval-trained"
) &
# GPU 1: the base rows at top-p 1 over the same plan
(
  export CUDA_VISIBLE_DEVICES=1
  for row in dense streaming split; do
    plan=()  # only the split row takes the plan (eval refuses --plan where no row uses it)
    if [ "$row" = split ]; then plan=(--plan "$OUT/plans/r15.json"); fi
    rtpurbo eval "${data[@]}" --rows "$row" ${plan[@]+"${plan[@]}"} --window 1024 --top-p 1 --ppl-windows 12 \
      --out "$OUT/eval-$row"
  done
) &
wait
rtpurbo eval --report-only --out "$OUT/eval-all" --merge "$OUT"/eval-{dense,streaming,split,trained}

# ablations: 50 samples of the retrieval-style tasks at 8K, 6 perplexity windows
abl=("${data[@]}" --lengths 8192 --samples 50 --ppl-windows 6
     --tasks niah_number niah_multikey niah_multiquery variable_tracking doc_qa code_function)
for w in 512 2048; do
  rtpurbo eval "${abl[@]}" --rows split --top-p 1 --window "$w" --plan "$OUT/plans/r15.json" --out "$OUT/abl-w$w"
done
for r in 10 25; do
  rtpurbo eval "${abl[@]}" --rows split --top-p 1 --window 1024 --plan "$OUT/plans/r$r.json" --out "$OUT/abl-r$r"
done
a=$OUT/train/artifact
rtpurbo eval "${abl[@]}" --rows --artifacts "p0.8=$a@0.8" "p0.9=$a@0.9" "p0.95=$a@0.95" "p0.99=$a@0.99" \
  --out "$OUT/abl-topp"
for set in lora attention all; do
  python3 scripts/train_gpu.py --model smollm2-135m --data "$OUT/train-data" --dev "$OUT/dev-data" \
    --from-artifact "$OUT/train/artifact-stage1" --trainable "$set" --distill-steps 60 \
    --no-gradient-checkpointing --no-eval --out "$OUT/train-$set"
  rtpurbo eval "${abl[@]}" --rows --artifacts "stage2-$set=$OUT/train-$set/artifact" --out "$OUT/abl-train-$set"
done
python3 scripts/summarize_eval_subset.py --length 8192 --samples 50 --ppl-windows 6 -- "$OUT"/abl-*/rows/*.json
# the shipped adapter is this run's stage-2 artifact:
#   python3 scripts/ship_adapter.py "$OUT/train/artifact" rtpurbo/adapters/smollm2-135m-rtpurbo --base smollm2-135m \
#     --results "$OUT/train/results.json"
