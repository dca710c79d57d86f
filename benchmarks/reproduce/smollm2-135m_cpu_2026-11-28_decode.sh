#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_cpu_2026-11-28_decode.md: decode time per token at 8K on a CPU,
# the embedded SmolLM2-135M dense vs converted by the shipped adapter. Machine: 2 CPU cores (about 5 minutes).
set -euo pipefail
OMP_NUM_THREADS=1 python3 benchmarks/decode_cpu.py --context 8192 --new-tokens 24
