#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-05_sparse-prefill-kernels.md: the retrieval heads' sparse
# prefill on its Triton kernels against compiled flex, both in one process per geometry (bench attention, one layer)
# and one after the other (bench model, 8 layers end to end), local heads on cuDNN's window kernel; then the kernels'
# GPU tests. One GPU, about 6 minutes on an H200; needs nvidia-cudnn-frontend (pip install -e ".[cudnn]").
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-05_sparse-prefill-kernels.sh OUT
set -euo pipefail
out=${1:?usage: $0 OUT}
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
mkdir -p "$out"
for geometry in llama-3.1-8b qwen3-30b-a3b; do
  "${rt[@]}" bench attention --geometries "$geometry" --prefill 32K,128K --decode 32K --budgets top-p \
    --prefill-blocks 16 --sparse-prefill-kernels flex,triton --window-kernel cudnn \
    --json "$out/attention_$geometry.json" | tee "$out/attention_$geometry.txt"
done
for kernel in flex triton; do
  "${rt[@]}" bench model --geometry llama-3.1-8b --lengths 32K 128K --decode-steps 16 --repeats 2 --no-flash-ttft \
    --prefill-blocks 16 --prefill-scoring mass --sparse-prefill-kernel "$kernel" --window-kernel cudnn \
    --out "$out/model_$kernel.jsonl"
done
{ python3 -m pytest -q tests/test_ops_gpu.py -k "triton_sparse_prefill or sparse_prefill_matches or block_mass"
  python3 -m pytest -q tests/test_sparse_prefill.py; } 2>&1 | tee "$out/gpu_tests.txt"
