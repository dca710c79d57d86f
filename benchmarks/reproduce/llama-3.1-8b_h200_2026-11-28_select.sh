#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-11-28_select.md: the decode step of one attention layer
# (Llama-3.1-8B geometry) at 128K / 512K / 1M keys, top-p and a 2048-key budget, with the selection broken down.
# Card: one NVIDIA H200 (about 2 minutes). Random weights.
set -euo pipefail
OUT=${OUT:-runs/select}
mkdir -p "$OUT"
python3 -m pytest -q tests/test_ops_gpu.py | tee "$OUT/gpu_tests.txt"
PYTHONPATH=. python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill= \
  --decode 131072,524288,1048576 --budgets top-p,2048 --json "$OUT/select_bench.json"
