#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-07_stream-priorities.md on one GPU (an H100 there): the
# selecting decode step per layer of 8 at 256K, 1M and 512K keys, with the retrieval head's chain captured at high
# stream priority (prio), that with the local heads' ring forked before the index scores (prio+pre), and the ring at
# high priority instead (ringprio), each paired against the step as shipped, with the bytes ceiling.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-07_stream-priorities.sh OUT   # about 1 minute
set -euo pipefail
here=$(git rev-parse --show-toplevel)
. "$here/benchmarks/reproduce/variant_trees.sh"  # start_run, archived, trees
start_run "${1:-}" llama-3.1-8b_h100_2026-12-07_stream-priorities 1  # $out, $raw, $tmp
archived head:e73905b
(cd "$tmp/head" && PYTHONPATH=. python3 benchmarks/decode_step_ab.py --trees $(trees head) --priorities \
  --cases step --layers 8 --ceiling --lengths 256K,1M,512K --rounds 5 --json "$out/call1/ab.json") \
  | tee "$out/call1/ab.txt"
