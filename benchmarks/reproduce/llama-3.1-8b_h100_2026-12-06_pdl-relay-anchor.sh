#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-06_pdl-relay-anchor.md on one GPU (an H100 there): the
# paired A/B of the selecting decode step and of the selection alone, c7f3a8d against d34d495 (the tree with the
# anchored level 0, since reverted), with PDL, the relay schedule and the anchor; then the GPU tests of that tree.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-06_pdl-relay-anchor.sh OUT   # about 3 minutes, from a git clone
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT}")
mkdir -p "$out/call1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/base" "$tmp/anchored"
git archive c7f3a8d | tar -x -C "$tmp/base"
git archive d34d495 | tar -x -C "$tmp/anchored"
cd "$tmp/anchored"
python3 benchmarks/decode_step_ab.py --trees base="$tmp/base" new=. --pdl --schedules relay --anchor \
  --cases step,select --lengths 128K,1M --timeline --rounds 6 --rep 30 --json "$out/call1/ab.json" | tee "$out/call1/ab.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py -k "anchor or dependent or graph_replay or side_stream" \
  | tee "$out/call1/tests2.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k "dependent_launch or ring_beside or two_role or threshold or topp" \
  | tee "$out/call1/tests1.txt" || true
