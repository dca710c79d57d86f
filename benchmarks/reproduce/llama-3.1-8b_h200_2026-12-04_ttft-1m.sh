#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-04_ttft-1m.md on one GPU: TTFT at 1M tokens (2 layers of the
# Llama-3.1-8B geometry, 128K prefill chunks, the local heads on the Triton window kernel's chunk layout) with the
# 16-block `mass` sparse retrieval prefill, against cuDNN dense; and the window kernel's loop variants.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-04_ttft-1m.sh OUT
#
# The loop variants (`-ahead`, `-lazy`) were measured at commit 2f0bb1e and removed after it (slower); run the
# window_kernels line from a checkout of that commit to repeat them. About 4 minutes on an H200.
set -euo pipefail
out=${1:?usage: $0 OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
mkdir -p "$out"
python3 benchmarks/window_kernels.py --lengths 32768,131072 --kernels rtpurbo-plain,triton-tma-m128-n128-w8,cudnn \
  --json "$out/window.json"
"${rt[@]}" bench model --layers 2 --lengths 1M --prefill-chunk 128K --prefill-blocks 16 --prefill-scoring mass \
  --no-cuda-graph --no-flash-ttft --decode-steps 4 --repeats 1 --out "$out/llama_1m_mass.jsonl"
