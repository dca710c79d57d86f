#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-04_dense-tail-split-search-launch.md on one GPU (H200 there), in
# the order of its three calls (random weights; every baseline in the same run):
#   call1 (commit 8629070): GPU tests of the dense tail and the threshold search; TTFT at 1M (2 layers, 128K chunks) and
#          128K (8 layers) of the 16-block `mass` sparse prefill without a dense tail and with tails of 256 and 1024
#          queries; the threshold search's launch sweep;
#   call2 (commit e6b497a, the search's new default launch): the launch sweep again on a wider grid; the selecting decode
#          step's kernels and search phases; the attention bench's decode rows at 128K / 1M; decode at 1M with
#          trained-like indexer scores, 8 layers;
#   call3: the GPU test files of the decode and steady-state paths in one process.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-04_dense-tail-split-search-launch.sh OUT   # about 20 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"/call1 "$out"/call2 "$out"/call3
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "dense_tail or threshold" | tee "$out/call1/gpu_tests.txt"
"${rt[@]}" bench model --layers 2 --lengths 1M --prefill-chunk 128K --prefill-blocks 16 --prefill-scoring mass \
  --prefill-dense-tail 256 1K --no-cuda-graph --no-flash-ttft --decode-steps 4 --repeats 1 --out "$out/call1/llama_1m_tail.jsonl"
"${rt[@]}" bench model --lengths 128K --prefill-blocks 16 --prefill-scoring mass --prefill-dense-tail 256 1K --repeats 3 \
  --decode-steps 8 --no-flash-ttft --out "$out/call1/llama_128k_tail.jsonl"
python3 benchmarks/decode_kernel_sweep.py --parts search_launch --json "$out/call2/search_launch.json"
python3 benchmarks/decode_kernel_sweep.py --parts profile --json "$out/call2/profile.json"
python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill "" --decode 131072,1048576 --budgets top-p \
  --json "$out/call2/attention_decode.json"
"${rt[@]}" bench model --cuda-graph --lengths 8K --decode-lengths 1M --index-logit-std 2.56 --no-flash-ttft --repeats 1 \
  --out "$out/call2/llama_1m_trained_like.jsonl"
python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py tests/test_gpu_steady_state.py tests/test_decode_static.py \
  tests/test_seqlen_threshold.py tests/test_generate_graphed.py | tee "$out/call3/gpu_tests_all.txt"
