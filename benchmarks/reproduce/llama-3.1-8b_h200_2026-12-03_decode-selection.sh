#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-03_decode-selection.md on one GPU (H200 there):
# where a 1M-token decode step goes (torch.profiler), the retrieval heads' decode chain at 128K-1M, and
# end-to-end decode of the 8-layer Llama-3.1-8B and Qwen3-30B-A3B geometries (random weights, random-filled caches).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-03_decode-selection.sh OUT   # about 9 minutes
set -euo pipefail
out=${1:?usage: $0 OUT}
mkdir -p "$out"
rt=(${RTPURBO:-python3 -m rtpurbo.cli})
python3 -m pytest -q tests/test_ops_gpu.py tests/test_seqlen_threshold.py -k "topp or threshold or decode" \
  | tee "$out/gpu_tests.txt"
python3 -m pytest -q tests/test_decode_static.py tests/test_generate_graphed.py tests/test_gpu_steady_state.py \
  | tee "$out/gpu_tests2.txt"
# launch shapes: level-0 bins of the selection, the combine of list / dense-mode attention (sweep/)
python3 benchmarks/decode_kernel_sweep.py --parts select,list,dense,profile,combine --json "$out/sweep.json" > "$out/sweep.txt"
python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill= --decode 131072,524288,1048576 \
  --budgets top-p,2048 --json "$out/attention.json" | tee "$out/attention.txt"
python3 benchmarks/attention_bench.py --geometries llama-3.1-8b --prefill= --decode 131072,524288,1048576 \
  --budgets top-p,2048 --index-scale 0.01 --json "$out/attention_flat.json" | tee "$out/attention_flat.txt"  # flat scores
"${rt[@]}" bench model --lengths 32K 128K --max-tokens 2048 --decode-lengths 512K 1M --repeats 1 --no-flash-ttft \
  --profile-decode 2 --profile-length 1M --out "$out/llama.jsonl"
"${rt[@]}" bench model --geometry qwen3-30b-a3b --lengths 32K --max-tokens 2048 --decode-lengths 1M --repeats 1 \
  --no-flash-ttft --out "$out/qwen.jsonl"
# trained-like indexer scores (std 2.56 logits against the random-filled caches)
"${rt[@]}" bench model --lengths 32K --max-tokens 2048 --decode-lengths 512K 1M --repeats 1 --no-flash-ttft \
  --index-logit-std 2.56 --out "$out/llama_sigma.jsonl"
"${rt[@]}" bench model --geometry qwen3-30b-a3b --lengths 32K --max-tokens 2048 --decode-lengths 1M --repeats 1 \
  --no-flash-ttft --index-logit-std 2.56 --out "$out/qwen_sigma.jsonl"
