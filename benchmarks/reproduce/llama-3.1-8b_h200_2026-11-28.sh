#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-11-28.md and qwen3-30b-a3b_h200_2026-11-28.md (one run
# writes both geometries): one attention layer, head-wise sparse vs SDPA cuDNN / flash, prefill 8K-1M and decode.
# Card: one NVIDIA H200 (about 6 minutes). Random weights: no model download.
set -euo pipefail
OUT=${OUT:-runs/attention-bench}
mkdir -p "$OUT"
PYTHONPATH=. python3 benchmarks/attention_bench.py --json "$OUT/attention_bench.json" | tee "$OUT/attention_bench.txt"
