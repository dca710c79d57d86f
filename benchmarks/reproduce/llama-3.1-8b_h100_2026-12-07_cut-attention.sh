#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-07_cut-attention.md on one GPU (an H100 there): the selecting
# decode step per layer of 8 at 128K-1M keys with the search stopping at tau and its cut and each attention program
# selecting its own keys (no tally, no gather), paired against the list path it replaces, and the GPU tests of it.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-07_cut-attention.sh OUT   # about 4 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, patched, trees
start_run "${1:-}" llama-3.1-8b_h100_2026-12-07_cut-attention 1  # $out, $raw, $tmp
archived head:a7924cf shipped:994dad3
patched cut shipped "$raw/patches/cut-every-length.patch"  # the cut path at every length, the query loaded after the scan
cd "$tmp/cut"
PYTHONPATH=. python3 "$tmp/shipped/benchmarks/decode_step_ab.py" --trees $(trees head cut) --placebo --cases step \
  --layers 8 --ceiling --lengths 256K,512K,1M,128K --rounds 6 --json "$out/call1/ab.json" | tee "$out/call1/ab.txt"
PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "topp_decode or always_list or threshold or capturable or ring_beside" | tee "$out/call1/tests_ops.txt"
PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py \
  -k "dependent_launch or cuda_graph_replay or side_stream" | tee "$out/call1/tests_static.txt"
