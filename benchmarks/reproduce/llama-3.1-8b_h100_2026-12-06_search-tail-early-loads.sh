#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_search-tail-early-loads.md on one GPU (an H100 there),
# call by call (random inputs; every comparison within one process):
#   call1: the tail schedule (level 0, then levels 1-3, the tally and the gather in one persistent launch) and the
#          fused schedule with PDL (tail, patches/tail-schedule.patch) against the phased search (head, e312c82), per
#          layer of 8 with the bytes ceiling, the selection alone, and kernel timelines at 128K / 256K;
#   call2: the one list buffer per row (head) against two alternating halves (h69, 69a2204), and the key levels'
#          loads issued before their branch (early, patches/key-level-loads-before-branch.patch); timelines at
#          256K-1M; the GPU tests of the decode chain;
#   call3, call4: the GPU tests of the decode chain and every threshold-selection case, on head.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_search-tail-early-loads.sh OUT   # ~20 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, copy, edited
start_run "${1:-}" llama-3.1-8b_h100_2026-12-06_search-tail-early-loads 4  # $out, $raw, $tmp
archived head:e312c82 h69:69a2204
copy tail head && (cd "$tmp/tail" && patch -s -p1 < "$raw/patches/tail-schedule.patch")
copy early head && (cd "$tmp/early" && patch -s -p1 < "$raw/patches/key-level-loads-before-branch.patch")
ab() { (cd "$tmp/head" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py "$@"); }
gpu_tests() {  # TREE -k EXPRESSION
  (cd "$tmp/$1" && python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "$2") | tail -3
}
lengths=128K,256K,512K,1M
chain="topp_decode or always_list or decode_step_is or dependent_launch or capturable or two_role or fused_threshold"

ab --trees base="$tmp/head" new="$tmp/tail" --schedules tail,fused --cases step,select --layers 8 --ceiling \
  --lengths $lengths --rounds 8 --json "$out/call1/ab_layers8.json" | tee "$out/call1/ab_layers8.txt"
ab --trees base="$tmp/head" new="$tmp/tail" --schedules tail,fused --cases step --layers 1 --timeline \
  --lengths 128K,256K --rounds 3 > "$out/call1/timeline.txt"

ab --trees h69="$tmp/h69" head="$tmp/head" new="$tmp/early" --cases step,select --layers 8 --ceiling --lengths $lengths \
  --rounds 8 --json "$out/call2/ab_layers8.json" | tee "$out/call2/ab_layers8.txt"
ab --trees head="$tmp/head" new="$tmp/early" --cases step --layers 1 --timeline --lengths 256K,512K,1M --rounds 3 \
  > "$out/call2/timeline.txt"

gpu_tests head "$chain or ties-200K-max or ties-20003-topp or spread-100K" | tee "$out/call3/gpu_tests.txt"
gpu_tests head "threshold_select_matches_reference and not ties-200K-max and not ties-20003-topp and not spread-100K" \
  | tee "$out/call4/gpu_tests.txt"
