#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-04_mass-kernel.md (the chunked/ folder) on one GPU (H200
# there): GPU tests of the mass block-score kernel and the paths that call it, its speed against the PyTorch
# reference (32K-1M, launch shapes at 128K), and TTFT of the sparse retrieval prefill with mass scores at 128K
# (8-layer Llama-3.1-8B geometry, random weights; one timed run after one warm-up, dense cuDNN in the same run).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-04_mass-kernel.sh OUT   # about 3 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py tests/test_train_stage2.py \
  -k "block_mass or sparse_prefill or cuda_past_the_window" | tee "$out/gpu_tests.txt"
python3 benchmarks/block_mass_speed.py --lengths 32768,131072,1048576 --json "$out/block_mass.json"
python3 benchmarks/block_mass_speed.py --lengths 131072 --sweep --json "$out/block_mass_sweep.json"
"${rt[@]}" bench model --lengths 128K --prefill-blocks 16 --prefill-scoring mass --repeats 1 --no-flash-ttft \
  --out "$out/llama_mass.jsonl"
