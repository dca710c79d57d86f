#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-04_one-launch-decode.md on one GPU (H200 there), in the
# order of its three calls (random weights; every baseline in the same run):
#   call1: GPU tests of the one-launch decode step and the paths around it; the attention bench's decode rows
#          (one layer, Llama-3.1-8B and Qwen3-30B-A3B geometries, 32K-1M);
#   call2: the decode rows at 384K / 512K; end to end (8 layers, Llama geometry) with the one-launch step against the
#          two-launch one and dense-graph, run with the seqlen threshold at 256K (the default then: add
#          --seqlen-threshold 256K to repeat it); TTFT at 1M with mass-scored sparse prefill (2 layers);
#   call3: end to end at the 512K default threshold: Llama (32K, 384K, 1M, a 2048-key budget, a decode profile at
#          128K) and Qwen3-30B-A3B (32K, 128K, 1M);
#   call4: decode at 1M with trained-like indexer scores (--index-logit-std 2.56), both geometries.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-04_one-launch-decode.sh OUT   # about 12 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"/call1 "$out"/call2 "$out"/call3 "$out"/call4
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "two_role or decode or topp" | tee "$out/call1/gpu_tests_ops.txt"
python3 benchmarks/attention_bench.py --geometries llama-3.1-8b,qwen3-30b-a3b --prefill "" \
  --decode 32768,131072,262144,1048576 --budgets top-p --json "$out/call1/attention_decode.json"
python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py tests/test_seqlen_threshold.py \
  tests/test_generate_graphed.py tests/test_gpu_steady_state.py | tee "$out/call1/gpu_tests_model.txt"
python3 benchmarks/attention_bench.py --geometries llama-3.1-8b,qwen3-30b-a3b --prefill "" --decode 393216,524288 \
  --budgets top-p --json "$out/call2/attention_decode.json"
"${rt[@]}" bench model --cuda-graph --lengths 32K 128K --decode-lengths 512K 1M --two-launch-decode --no-flash-ttft \
  --seqlen-threshold 256K --out "$out/call2/llama_decode.jsonl"
"${rt[@]}" bench model --layers 2 --lengths 1M --prefill-chunk 128K --prefill-blocks 16 --prefill-scoring mass \
  --no-cuda-graph --no-flash-ttft --decode-steps 4 --repeats 1 --out "$out/call2/llama_1m_mass.jsonl"
"${rt[@]}" bench model --cuda-graph --lengths 32K --decode-lengths 384K 1M --max-tokens 2048 --no-flash-ttft \
  --profile-decode 4 --profile-length 128K --out "$out/call3/llama.jsonl"
"${rt[@]}" bench model --geometry qwen3-30b-a3b --cuda-graph --lengths 32K --decode-lengths 128K 1M --max-tokens 2048 \
  --no-flash-ttft --out "$out/call3/qwen.jsonl"
for g in qwen3-30b-a3b llama-3.1-8b; do
  "${rt[@]}" bench model --geometry $g --cuda-graph --lengths 8K --decode-lengths 1M --index-logit-std 2.56 \
    --no-flash-ttft --repeats 1 --out "$out/call4/$g.jsonl"
done
