#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_h200_2026-12-05_eager-profile.md: torch.profiler over one eager prefill and
# 8 eager decode steps of SmolLM2-135M's geometry (random weights, bf16, batch 1, a 4,096-token prompt), dense through
# a DynamicCache and converted through a HeadwiseCache, as transformers' generate() runs them. One GPU, about a minute.
#
#   bash benchmarks/reproduce/smollm2-135m_h200_2026-12-05_eager-profile.sh OUT
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"
python3 benchmarks/eager_generate_profile.py 4096 --json "$out/eager_profile.json" | tee "$out/eager_profile.txt"
