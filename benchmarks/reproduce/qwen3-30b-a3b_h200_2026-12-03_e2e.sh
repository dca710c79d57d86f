#!/usr/bin/env bash
# Reproduces benchmarks/results/qwen3-30b-a3b_h200_2026-12-03_e2e.md on one GPU (H200 there): the Qwen3-30B-A3B
# geometry end to end (transformers' Qwen3-MoE modules, random weights): TTFT at 32K / 128K against cuDNN and flash
# with the sparse retrieval prefill, decode at 1M with random-filled caches, and TTFT at 1M on one layer.
#
#   bash benchmarks/reproduce/qwen3-30b-a3b_h200_2026-12-03_e2e.sh OUT   # about 9 minutes
#
# The 1M run prefills dense in one shot with its MLPs on 128K-token chunks (--mlp-chunk defaults to the prefill
# chunk); dense cuDNN and flash take 1.5 and 2 minutes of it (warm-up run included).
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
"${rt[@]}" bench model --geometry qwen3-30b-a3b --lengths 32K 128K --prefill-blocks 16 --max-tokens 2048 \
  --decode-lengths 1M --repeats 1 --out "$out/qwen.jsonl"
"${rt[@]}" bench model --geometry qwen3-30b-a3b --layers 1 --lengths 1M --prefill-chunk 128K --prefill-blocks 16 \
  --no-cuda-graph --decode-steps 4 --repeats 1 --out "$out/qwen_1m.jsonl"
