#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-04_mass-ttft.md on one GPU (H200 there): time to first
# token of the retrieval heads' sparse prefill with pooled and with mass block scores, Llama-3.1-8B geometry, random
# weights: 8 layers at 32K / 128K, then 2 layers at 1M in chunks of 128K (mass; the pooled 1M row is
# llama-3.1-8b_h200_2026-12-03_sparse-prefill-ttft.sh's).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-04_mass-ttft.sh OUT   # about 6 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
for scoring in pooled mass; do
  "${rt[@]}" bench model --lengths 32K 128K --prefill-blocks 16 64 --prefill-scoring $scoring --repeats 1 \
    --no-flash-ttft --out "$out/llama_$scoring.jsonl"
done
"${rt[@]}" bench model --layers 2 --lengths 1M --prefill-chunk 128K --prefill-blocks 16 --prefill-scoring mass \
  --no-cuda-graph --no-flash-ttft --decode-steps 4 --repeats 1 --out "$out/llama_1m_mass.jsonl"
