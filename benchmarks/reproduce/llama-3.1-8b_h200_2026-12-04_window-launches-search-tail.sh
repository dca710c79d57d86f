#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-04_window-launches-search-tail.md on one GPU (H200 there), in
# the order of its three calls (random weights; every baseline in the same run):
#   call1 (commit d1663c9): the GPU test files of the kernels, the steady state, static decode, the length threshold and
#          graphed generation, in one process;
#   call2: the whole selection of one retrieval head (index scores + threshold search) under launches with fewer warps
#          per program;
#   call3 (commit 7046b4a): the serial tail of a search level (walks, probes) as one program; the window kernel's
#          launches in three interleaved rounds; then, at commit fef4866 (which still has the `qk_ahead` launch option),
#          the launches that issue the next key block's q k^T ahead of the softmax.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-04_window-launches-search-tail.sh OUT   # about 13 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
out=$(realpath -m "$out")
mkdir -p "$out"/call1 "$out"/call2 "$out"/call3
export PYTHONPATH=${PYTHONPATH:-$PWD}
python3 -m pytest -q -p no:cacheprovider -rfE --tb=short --durations=15 tests/test_ops_gpu.py \
  tests/test_gpu_steady_state.py tests/test_decode_static.py tests/test_seqlen_threshold.py \
  tests/test_generate_graphed.py | tee "$out/call1/gpu_suite.txt"
python3 benchmarks/decode_kernel_sweep.py --parts search_launch \
  --search-launches 2x8x2048,4x4x2048,8x2x2048,16x1x2048,8x4x1024,4x2x2048,16x2x1024,8x1x4096 \
  --json "$out/call2/search_launches.json"
python3 benchmarks/decode_kernel_sweep.py --parts walk --json "$out/call3/walk.json"
python3 benchmarks/window_kernels.py --lengths 32768,131072 --kernels triton,cudnn --rounds 3 \
  --launches m128-n128-w8-s3,m128-n128-w8-s3-ws,m256-n64-w16-s3,m128-n64-w4-s3 --json "$out/call3/window.json"
ahead=$(mktemp -d)
git worktree add --detach "$ahead" fef4866
(cd "$ahead" && PYTHONPATH=$PWD python3 benchmarks/window_kernels.py --lengths 32768,131072 --kernels triton --rounds 3 \
  --launches m128-n128-w8-s3,m128-n64-w8-s3-ahead,m128-n128-w8-s2-ahead,m128-n128-w8-s3-ahead \
  --json "$out/call3/window_ahead.json")
git worktree remove --force "$ahead"
