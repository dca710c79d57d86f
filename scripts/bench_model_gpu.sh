#!/usr/bin/env bash
# End-to-end model benchmark on one GPU: dense transformers SDPA + DynamicCache vs rtpurbo head-wise sparse.
#
#   bash scripts/bench_model_gpu.sh           # Llama-3.1-8B geometry, 8 layers, 32K + 128K, OOM search (~3-4 min)
#   bash scripts/bench_model_gpu.sh --quick   # smoke run: 2 layers, 4K + 16K (< 1 min)
#   bash scripts/bench_model_gpu.sh --quick --oom-search   # the same, then 20 s of OOM search
#
# Further arguments go to `rtpurbo bench model` (e.g. --layers 32, --max-tokens 2048).
# Writes to $OUT (default runs/bench-model): <name>.jsonl (one line per measurement, as it comes, appended:
# a run starts with its config record and ends with its whole result), <name>.md (the latest run's report),
# stdout.txt (report + JSON line), stderr.txt (progress).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/bench-model}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.

if [ "${1:-}" = "--quick" ]; then
  shift
  args=(--quick --deadline 40 --out "$OUT/quick.jsonl")
  limit=110
  if [[ " $* " == *" --oom-search "* ]]; then  # --deadline must exceed the search's reserve: 40 s to measure, 20 s to search
    args=(--quick --deadline 60 --oom-reserve 20 --out "$OUT/quick.jsonl")
    limit=130
  fi
else
  args=(--lengths 32K 128K --oom-search --deadline 240 --out "$OUT/model_bench.jsonl")
  limit=340
fi

nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader || true
# --deadline skips measurements that have not started by then; `timeout` is only a backstop.
timeout -k 10 "$limit" python3 -m rtpurbo.cli bench model "${args[@]}" "$@" \
  2> >(tee "$OUT/stderr.txt" >&2) | tee "$OUT/stdout.txt"
