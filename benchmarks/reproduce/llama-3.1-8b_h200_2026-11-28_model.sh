#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-11-28_model.md: a whole Llama-3.1-8B-geometry model
# (8 layers, random weights), dense vs converted: time to first token, decode, peak memory, where dense runs
# out of memory. Card: one NVIDIA H200 (about 8 minutes). The decode rows of that file were eager; today's
# default graphs decode (llama-3.1-8b_h200_2026-11-28_decode-graph.sh), so --no-cuda-graph reproduces them.
set -euo pipefail
OUT=${OUT:-runs/bench-model}
mkdir -p "$OUT"
rtpurbo bench model --lengths 32K 128K --oom-search --no-cuda-graph --out "$OUT/model_bench.jsonl"
rtpurbo bench model --lengths 32K 128K --max-tokens 2048 --no-cuda-graph --out "$OUT/model_bench_budget.jsonl"
