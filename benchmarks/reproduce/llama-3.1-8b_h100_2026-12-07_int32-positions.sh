#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-07_int32-positions.md on one GPU (an H100 there):
#   call1: the shipped step (40f8cc4's kernels) on the harness with the indexer query at norm 4 (about 10 % of the keys
#          kept), the step, chain, ring and every cases at 128K-1M with the bytes ceiling and a placebo, each tree again
#          with the cache's key positions as int32 (--positions int32); then the 8-layer Llama decode end to end;
#   call2: the GPU tests of b3de458 (static decode holding int32 positions) that run static decode, graphs, the fused
#          append and the selecting and one-launch decode kernels; the Llama decode at 256K / 1M of 40f8cc4 and of
#          b3de458 one after the other; the Qwen3-30B-A3B geometry's decode at 1M;
#   call3: every GPU test file on b3de458 (stopped by its 420 s limit).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-07_int32-positions.sh OUT   # about 17 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, trees, llama_decode_e2e
start_run "${1:-}" llama-3.1-8b_h100_2026-12-07_int32-positions 3  # $out, $raw, $tmp
archived head:40f8cc4 i32:b3de458
export PYTHONUNBUFFERED=1
(cd "$tmp/head" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py --trees head=. --placebo \
  --cases step,chain,ring,every --layers 8 --ceiling --lengths 256K,1M,128K,512K --rounds 5 --positions int32 \
  --json "$out/call1/ab.json") | tee "$out/call1/ab.txt"
llama_decode_e2e head call1
(cd "$tmp/i32" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py \
  tests/test_gpu_steady_state.py tests/test_ops_gpu.py -k "static or graph or side_stream or dependent_launch or \
  one_launch or two_role or topp_decode or ring_beside or always_list or capturable or batched or steady") \
  | tail -3 | tee "$out/call2/tests.txt"
for tree in head i32; do
  (cd "$tmp/$tree" && PYTHONPATH=. python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --index-logit-std 2.56 \
    --no-flash-ttft --decode-lengths 256K 1M --repeats 3 --out "$out/call2/e2e_$tree.jsonl") | tee -a "$out/call2/e2e.txt"
done
(cd "$tmp/head" && PYTHONPATH=. python3 -m rtpurbo.cli bench model --geometry qwen3-30b-a3b --cuda-graph --lengths 8K \
  --decode-lengths 1M --index-logit-std 2.56 --no-flash-ttft --repeats 1 --out "$out/call2/e2e_qwen.jsonl") \
  | tee -a "$out/call2/e2e.txt"
(cd "$tmp/i32" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider -rs tests/test_ops_gpu.py \
  tests/test_decode_static.py tests/test_gpu_steady_state.py tests/test_cudnn_window_gpu.py tests/test_append_interpret.py \
  tests/test_cache.py tests/test_windowed_retrieval_cache.py) | tail -5 | tee "$out/call3/tests.txt"
