#!/usr/bin/env bash
# Issue #4, the real run in one device call: stage 1 + stage 2 on SmolLM2 (W=1024, S=4, 15%, 8K).
#
#   scripts/train_gpu.sh MODEL.gguf TRAIN_SHARDS DEV_SHARDS HEAD_PLAN.json [extra train_gpu.py flags]
#
# Writes to $OUT (default runs/gpu): train_gpu.log, results.json, indexer_report.json,
# distill_report.json and artifact/ (3 files): 7 files, all small.
# Checkpoints go to /tmp (not returned). Needs torch, transformers, accelerate, peft, gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
export TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
python3 scripts/train_gpu.py --model "$1" --data "$2" --dev "$3" --plan "$4" --out "$out" "${@:5}" \
  2>&1 | tee "$out/train_gpu.log"
