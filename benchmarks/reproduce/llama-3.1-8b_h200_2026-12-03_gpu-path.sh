#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-03_gpu-path.md: the steady-state GPU path (no
# recompiles, no L x L memory, no host syncs), the seqlen threshold's break-even, the sparse prefill of
# retrieval heads, the window-kernel options, and the end-to-end benches of both geometries.
# Card: one NVIDIA H200 (about 15 minutes; the file's raw outputs came from three shorter runs of these commands).
set -euo pipefail
OUT=${OUT:-runs/gpu-path}
mkdir -p "$OUT"
export PYTHONPATH=. PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
python3 -m pytest -q -rs -s tests/test_gpu_steady_state.py tests/test_ops_gpu.py tests/test_decode_static.py \
  tests/test_seqlen_threshold.py tests/test_sparse_prefill.py | tee "$OUT/gpu_tests.txt"
python3 benchmarks/decode_kernel_sweep.py --parts dense --json "$OUT/sweep.json" | tee "$OUT/sweep.txt"
python3 benchmarks/window_kernels.py --lengths 32768,131072 --json "$OUT/window.json" | tee "$OUT/window.txt"
# one layer: prefill (dense and sparse retrieval heads, the profile of a 32K layer) and decode (the threshold rows)
python3 benchmarks/attention_bench.py --prefill 32768,131072,1048576 --prefill-blocks 16,64 --profile-prefill 32768 \
  --decode 32768,131072,524288,1048576 --budgets top-p,2048 --json "$OUT/attention.json" | tee "$OUT/attention.txt"
# end to end, 8 layers: TTFT against cuDNN and flash with Amdahl ceilings, graphed decode against dense-graph
rtpurbo bench model --lengths 32K 128K --max-tokens 2048 --decode-lengths 512K 1M --repeats 2 --out "$OUT/llama.jsonl"
rtpurbo bench model --geometry qwen3-30b-a3b --lengths 32K 128K --max-tokens 2048 --decode-lengths 1M --repeats 2 \
  --out "$OUT/qwen.jsonl"
# the sparse prefill's fidelity on the real model (any machine; 2 windows of 8K)
python3 benchmarks/sparse_prefill_fidelity.py --model smollm2-135m-rtpurbo --windows 2 --length 8192 | tee "$OUT/fidelity.json"
