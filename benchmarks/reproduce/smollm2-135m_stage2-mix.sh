#!/usr/bin/env bash
# Issue #15, part 4 on one H200: stage 2 of a chosen plan, alone, with more steps, and with the
# long-range training mix; then a paired eval of the adapters against dense.
#
#   bash benchmarks/reproduce/smollm2-135m_stage2-mix.sh train OUT   # ~30 min: two trainings
#   bash benchmarks/reproduce/smollm2-135m_stage2-mix.sh eval OUT    # one row per call, see ROWS
#
# Inputs (environment), made on a CPU machine with the corpora and carried:
#   MODEL      base model (default smollm2-135m)
#   PLAN       the plan: OUT_OF_PLAN_SEARCH/headwise_config.json (its W comes along)
#   TRAIN      rtpurbo data prepare --out train                         (natural text + 10% needles)
#   MIX        rtpurbo data prepare --out mix --synthetic-ratio 0.3 --synthetic-kinds passkey kv multihop \
#                niah_multikey niah_multivalue niah_multiquery multikey_lines variable_tracking_chains \
#                common_words frequent_words common_words_close        (train-split task seeds, training-pool text)
#   EVAL_DATA  rtpurbo eval --prepare-only --lengths 2048 4096 8192 --samples 1 --ppl-windows 12 --save-corpus \
#                corpus.json.gz --out prep   (windows + corpus: samples are built here from CORPUS)
#   CORPUS     corpus.json.gz of that command; SAMPLES samples per task and length (default 400: the paired
#              CI of the task average reaches about ±0.5 points at 4K and 8K, projected from the
#              2026-11-28 eval's per-sample scores)
#   ROWS       eval rows of this call (default: dense); artifacts: shipped, plan-300, plan-600, mix-600
#
# train: stage 1 (240 s budget) + stage 2, 600 steps, artifacts kept every 100 steps, without and with
# the mix (stage 2 at ~1.0 s/step without gradient checkpointing: ~10 min each, ~28 min in all).
# eval: answers decode from CUDA graphs (rtpurbo eval's default on a GPU): ~26 ms per sample at 4K and ~35 ms
# at 8K for one row alone with batch 16, ~130 ms per sample each for five rows sharing one H200 (2026-12-03),
# so 19 tasks x 400 samples at 4K and 8K ~ 8 min per row alone: one or two rows per call; then merge the rows into one paired
# report with rtpurbo eval --report-only --merge (the command is printed).
set -euo pipefail
mode=${1:?usage: smollm2-135m_stage2-mix.sh train|eval OUT}
out=${2:?usage: smollm2-135m_stage2-mix.sh train|eval OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
MODEL=${MODEL:-smollm2-135m}
mkdir -p "$out"

if [ "$mode" = train ]; then
  common=(--model "$MODEL" --plan "${PLAN:?PLAN=headwise_config.json}" --train --data "${TRAIN:?TRAIN=shards}"
          --indexer-time-budget 240 --distill-steps 600 --distill-no-gradient-checkpointing
          --distill-checkpoint-every 100 --distill-keep-checkpoints)
  "${rt[@]}" convert "${common[@]}" --out "$out/plan" --json > "$out/plan.json"
  "${rt[@]}" convert "${common[@]}" --distill-data "${MIX:?MIX=shards}" --out "$out/mix" --json > "$out/mix.json"
  rm -rf "$out"/*.checkpoints
elif [ "$mode" = eval ]; then
  declare -A artifacts=([shipped]=smollm2-135m-rtpurbo [plan-300]="$out/plan.distill-step-00300"
                        [plan-600]="$out/plan" [mix-600]="$out/mix")
  for row in ${ROWS:-dense}; do
    flags=(--rows dense)
    [ "$row" = dense ] || flags=(--rows --artifacts "$row=${artifacts[$row]}")
    "${rt[@]}" eval --model "$MODEL" --data "${EVAL_DATA:?}" --corpus "${CORPUS:?}" --workers 16 \
      --lengths ${LENGTHS:-2048 4096 8192} --samples "${SAMPLES:-400}" --ppl-windows 12 --speed-repeats 0 \
      --batch-size 16 "${flags[@]}" --out "$out/eval-$row"
    rm -f "$out/eval-$row/eval_data.npz"  # rebuilt from the corpus in a minute; hundreds of MB
  done
  echo "when every row is done: ${rt[*]} eval --report-only --out $out/eval --merge $out/eval-*"
else
  echo "mode must be train or eval" >&2
  exit 2
fi
