#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-04_tail-cost-selection-phases.md on one GPU (about 5 min):
# the decode step's kernels and the threshold search's phases at 128K and 1M; TTFT at 1M (2 layers, 128K chunks) and
# 128K (8 layers) of the 16-block `mass` sparse retrieval prefill with and without a 256-query dense tail.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-04_tail-cost-selection-phases.sh OUT
set -euo pipefail
out=${1:?usage: $0 OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
mkdir -p "$out"
python3 benchmarks/decode_kernel_sweep.py --parts profile --json "$out/profile.json"
"${rt[@]}" bench model --layers 2 --lengths 1M --prefill-chunk 128K --prefill-blocks 16 --prefill-scoring mass \
  --prefill-dense-tail 256 --no-cuda-graph --no-flash-ttft --decode-steps 4 --repeats 1 --out "$out/llama_1m_tail.jsonl"
"${rt[@]}" bench model --lengths 128K --prefill-blocks 16 --prefill-scoring mass --prefill-dense-tail 256 --repeats 3 \
  --decode-steps 8 --no-flash-ttft --out "$out/llama_128k_tail.jsonl"
