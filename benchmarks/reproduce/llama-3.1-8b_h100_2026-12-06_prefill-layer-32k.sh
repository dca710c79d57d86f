#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_prefill-layer-32k.md on one GPU (an H100 there): one
# prefill layer at 32K, Llama-3.1-8B and Qwen3-30B-A3B geometries, against SDPA cuDNN and flash, with its profile.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_prefill-layer-32k.sh OUT   # about 1 minute
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT}")
mkdir -p "$out"
cd "$(git rev-parse --show-toplevel)"
PYTHONPATH=. python3 -m rtpurbo.cli bench attention --prefill 32K --decode "" --profile-prefill 32768 \
  --json "$out/attention.json" | tee "$out/attention.txt"
