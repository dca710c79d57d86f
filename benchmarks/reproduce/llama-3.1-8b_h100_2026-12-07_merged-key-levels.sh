#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-07_merged-key-levels.md on one GPU (an H100 there): the
# selecting decode step per layer of 8 at 256K-1M keys with the search's levels 2-3 in the cut attention's launch
# (fin, finhold), level 1 holding the next launch (hold1), level 0 without a ticket (r0fin, r0m23), and levels 2-3 in
# one launch of the search (m23; merged, as shipped), each paired against 689cffc; then the GPU tests of the shipped
# tree.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-07_merged-key-levels.sh OUT   # about 12 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, patched, trees
start_run "${1:-}" llama-3.1-8b_h100_2026-12-07_merged-key-levels 3  # $out, $raw, $tmp
archived base:689cffc cut:994dad3 merged:004732d
for variant in fin finhold hold1 r0fin; do patched "$variant" base "$raw/patches/$variant.patch"; done
patched m23 cut "$raw/patches/m23.patch"
patched r0m23 cut "$raw/patches/r0m23.patch"
ab() {  # CALL TREE...: the paired step at 256K, 512K and 1M, six rounds, the first tree loaded twice
  local call=$1; shift
  PYTHONPATH=. python3 "$tmp/merged/benchmarks/decode_step_ab.py" --trees $(trees "$@") --placebo --cases step \
    --layers 8 --ceiling --lengths 256K,512K,1M --rounds 6 --json "$out/$call/ab.json" | tee "$out/$call/ab.txt"
}
cd "$tmp/merged"
ab call1 base fin r0fin r0m23
ab call2 base finhold hold1 m23
ab call3 base merged
PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "waits_out_kernels or threshold_select_matches or topp_decode or always_list or dependent_launch or capturable" \
  | tee "$out/call3/tests_ops.txt"
PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py \
  -k "dependent_launch or cuda_graph_replay or side_stream" | tee "$out/call3/tests_static.txt"
