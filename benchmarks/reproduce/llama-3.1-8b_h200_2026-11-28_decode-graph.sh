#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-11-28_decode-graph.md: decode replayed from CUDA graphs
# against a graphed dense baseline, end to end (8-layer Llama-3.1-8B geometry, random weights) and per layer.
# Card: one NVIDIA H200 (about 10 minutes). The file's raw outputs came from six shorter runs of these commands.
set -euo pipefail
OUT=${OUT:-runs/decode-graph}
mkdir -p "$OUT"
python3 -m pytest -q tests/test_ops_gpu.py tests/test_decode_static.py tests/test_append_interpret.py \
  tests/test_generate_graphed.py tests/test_bench.py | tee "$OUT/gpu_tests.txt"
PYTHONPATH=. python3 benchmarks/decode_kernel_sweep.py --json "$OUT/sweep.json" | tee "$OUT/sweep.txt"
PYTHONPATH=. python3 benchmarks/attention_bench.py --prefill= --decode 131072,524288,1048576 --budgets top-p,2048 \
  --json "$OUT/decode_bench.json" | tee "$OUT/decode_bench.txt"
PYTHONPATH=. python3 benchmarks/prefill_profile.py 131072 | tee "$OUT/prefill_profile.jsonl"
PYTHONPATH=. python3 benchmarks/local_prefill_paths.py 131072 | tee "$OUT/local_prefill.txt"
# end to end: graphed decode (default) with the dense-graph baseline, budgets, decode after random caches
rtpurbo bench model --lengths 32K 128K --repeats 2 --out "$OUT/ttft.jsonl"
rtpurbo bench model --lengths 32K 128K --max-tokens 2048 --decode-lengths 512K 1M --out "$OUT/graph.jsonl"
rtpurbo bench model --lengths 32K --no-cuda-graph --profile-decode 8 --out "$OUT/eager.jsonl"
