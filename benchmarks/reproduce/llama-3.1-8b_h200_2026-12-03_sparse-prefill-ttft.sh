#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-03_sparse-prefill-ttft.md on one GPU (H200 there):
# time to first token with the retrieval heads' sparse prefill (bench model --prefill-blocks), Llama-3.1-8B geometry,
# random weights: 8 layers at 32K / 128K (with the flash backend's dense TTFT and a decode profile at 32K), and
# 2 layers at 1M prefilled in chunks of 128K.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-03_sparse-prefill-ttft.sh OUT   # about 5 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
"${rt[@]}" bench model --lengths 32K 128K --prefill-blocks 16 64 --repeats 1 --profile-decode 2 --profile-length 32K \
  --out "$out/llama.jsonl"
"${rt[@]}" bench model --layers 2 --lengths 1M --prefill-chunk 128K --prefill-blocks 16 --no-cuda-graph --no-flash-ttft \
  --decode-steps 4 --repeats 1 --out "$out/llama_1m.jsonl"
