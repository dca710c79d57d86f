#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-07_level1-narrow-level0-grouped.md on one GPU (an H100
# there):
#   call1: the selecting step per layer of 8 at 128K-1M keys for e729b58 (loaded twice: the placebo), `narrow` (level
#          1 bins level 0's chosen bin with 10 bits where it holds at most 24,576 keys) and `g4` (narrow, and level 0
#          in 256-key steps, four to a round trip to L2); then the selection's GPU tests and decode end to end on g4;
#   call2: e729b58's step, its chain alone and its ring alone; decode end to end, Llama and Qwen3-30B-A3B geometries.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-07_level1-narrow-level0-grouped.sh OUT   # about 10 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, patched, trees, llama_decode_e2e
start_run "${1:-}" llama-3.1-8b_h100_2026-12-07_level1-narrow-level0-grouped 2  # $out, $raw, $tmp
archived head:e729b58
patched narrow head "$raw/patches/level1-narrow-walk.patch"  # the kernels, their interpreter tests, the simulation
patched g4 narrow "$raw/patches/level0-grouped-loads.patch"
(cd "$tmp/head" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py --trees $(trees head narrow g4) --placebo \
  --cases step --layers 8 --ceiling --lengths 256K,512K,1M,128K --rounds 5 --json "$out/call1/ab.json") \
  | tee "$out/call1/ab.txt"
(cd "$tmp/g4" && PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "threshold or topp or waits_out or cut") | tail -3 | tee "$out/call1/tests_ops.txt"
llama_decode_e2e g4 call1
(cd "$tmp/head" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py --trees $(trees head) --placebo \
  --cases step,chain,ring --layers 8 --ceiling --lengths 256K,512K,1M,128K --rounds 5 --json "$out/call2/ab.json") \
  | tee "$out/call2/ab.txt"
llama_decode_e2e head call2
(cd "$tmp/head" && PYTHONPATH=. python3 -m rtpurbo.cli bench model --geometry qwen3-30b-a3b --cuda-graph --lengths 8K \
  --decode-lengths 1M --index-logit-std 2.56 --no-flash-ttft --repeats 1 --out "$out/call2/e2e_qwen.jsonl") \
  | tee "$out/call2/e2e_qwen.txt"
