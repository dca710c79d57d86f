#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_bin-lists.md on one GPU (an H100 there), call by call
# (random inputs; every comparison within one process):
#   call1: how often level 1's walk resolves tau from a bin's list (lists_stats.py); the lists ranked by a 64 x 64
#          comparison (n2, d556044) against the tree before lists (base, 2b74ff1), lists of 32 / 128 keys (l32, l128)
#          and the walk before 868c249 (walk0, 3ee006c), per layer of 8 with the bytes ceiling; timelines; GPU tests;
#   call2: the lists resolved by a sort (sort, 69a2204; sort32: lists of 32 keys; pp: the list stores one step late,
#          patches/list-stores-one-step-late.patch) against n2 and base; timelines of the selection alone; GPU tests;
#   call3: 69a2204 against 2b74ff1: the selecting step, the step over every key and the selection alone;
#   call4: the GPU selection tests call 2 did not reach.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_bin-lists.sh OUT   # ~15 minutes
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, copy, edited
start_run "${1:-}" llama-3.1-8b_h100_2026-12-06_bin-lists 4  # $out, $raw, $tmp
archived base:2b74ff1 n2:d556044 walk0:3ee006c sort:69a2204
edited l32 n2 threshold_phases.py 's/^BIN_LIST = 64$/BIN_LIST = 32/'
edited l128 n2 threshold_phases.py 's/^BIN_LIST = 64$/BIN_LIST = 128/'
edited sort32 sort threshold_phases.py 's/^BIN_LIST = 64$/BIN_LIST = 32/'
copy pp sort && (cd "$tmp/pp" && patch -s -p1 < "$raw/patches/list-stores-one-step-late.patch")
ab() { (cd "$tmp/sort" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py "$@"); }
lengths=128K,256K,512K,1M

(cd "$tmp/n2" && PYTHONPATH=. python3 "$raw/call1/lists_stats.py" $lengths) | tee "$out/call1/lists_stats.txt"
ab --trees base="$tmp/base" new="$tmp/n2" l32="$tmp/l32" l128="$tmp/l128" walk0="$tmp/walk0" --cases step --layers 8 --ceiling \
  --lengths $lengths --rounds 8 --json "$out/call1/ab_layers8.json" | tee "$out/call1/ab_layers8.txt"
ab --trees base="$tmp/base" new="$tmp/n2" --cases step,select --layers 1 --timeline --lengths 256K,1M --rounds 3 \
  > "$out/call1/timeline.txt"
(cd "$tmp/n2" && python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "topp_decode or always_list or decode_step_is or dependent_launch or capturable or two_role") | tail -3 \
  | tee "$out/call1/gpu_tests.txt"

ab --trees base="$tmp/base" n2="$tmp/n2" sort="$tmp/sort" sort32="$tmp/sort32" pp="$tmp/pp" --cases step --layers 8 --ceiling \
  --lengths $lengths --rounds 8 --json "$out/call2/ab_layers8.json" | tee "$out/call2/ab_layers8.txt"
ab --trees base="$tmp/base" sort="$tmp/sort" pp="$tmp/pp" --cases select --layers 1 --timeline --lengths 256K,1M --rounds 3 \
  > "$out/call2/timeline.txt"
(cd "$tmp/sort" && python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py \
  -k "topp_decode or always_list or decode_step_is or dependent_launch or capturable or two_role") | tail -3 \
  | tee "$out/call2/gpu_tests.txt"

ab --trees base="$tmp/base" new="$tmp/sort" --cases step,every,select --layers 8 --ceiling --lengths $lengths --rounds 8 \
  --json "$out/call3/ab_layers8.json" | tee "$out/call3/ab_layers8.txt"

(cd "$tmp/sort" && python3 -m pytest -v -p no:cacheprovider tests/test_ops_gpu.py -k threshold_select_matches_reference) \
  | grep -E "PASSED|FAILED|passed|failed" | tee "$out/call4/gpu_tests.txt"
