#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-03_fused-selection.md on one GPU (H200 there): the top-p
# threshold search as one persistent kernel ("fused") against one launch per phase ("phased", the default).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-03_fused-selection.sh OUT   # about 8 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
python3 -m pytest -q tests/test_ops_gpu.py -k "threshold or fused or select" | tee "$out/gpu_tests.txt"
# both schedules: the whole selection at 128K / 1M, and the kernels of one decode layer step
python3 benchmarks/decode_kernel_sweep.py --parts select,profile --json "$out/sweep.json" > "$out/sweep.txt"
python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill= --decode 32768,131072,262144,1048576 \
  --budgets top-p,2048 --json "$out/attention.json" | tee "$out/attention.txt"
# end to end with the default (phased) schedule; the fused rows of the results file ran with the default set to
# "fused" in rtpurbo/ops/triton/topp.py
"${rt[@]}" bench model --lengths 32K --max-tokens 2048 --decode-lengths 128K 1M --repeats 1 --no-flash-ttft \
  --out "$out/llama.jsonl"
"${rt[@]}" bench model --geometry qwen3-30b-a3b --lengths 32K --max-tokens 2048 --decode-lengths 1M --repeats 1 \
  --no-flash-ttft --out "$out/qwen.jsonl"
