#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h200_2026-12-06_search-prefetch-grouped-walk.md on one GPU (an H200
# there): the paired A/B of the selecting decode step and of the selection alone, with and without PDL, for three
# trees: main (28a71f7, the search as shipped), prefetch (8ef0ff5: each phase after level 0 loads its first scores
# before its PDL wait, a key level loads its state in one round trip) and both (e20e2ba: prefetch + the grouped walk);
# then the PDL test of the kernels (main) and the graph-replay decode tests (prefetch).
#
#   bash benchmarks/reproduce/llama-3.1-8b_h200_2026-12-06_search-prefetch-grouped-walk.sh OUT   # ~2 minutes, git clone
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT}")
mkdir -p "$out/call1" "$out/call3"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for tree in main:28a71f7 prefetch:8ef0ff5 both:e20e2ba; do
  mkdir -p "$tmp/${tree%%:*}"
  git archive "${tree##*:}" | tar -x -C "$tmp/${tree%%:*}"
done
cd "$tmp/prefetch"
RTPURBO_PDL=0 python3 benchmarks/decode_step_ab.py --trees main="$tmp/main" prefetch=. both="$tmp/both" --pdl \
  --cases step,select --lengths 128K,1M --timeline --rounds 5 --rep 25 --json "$out/call1/ab.json" | tee "$out/call1/ab.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_decode_static.py -k "dependent or graph_replay" | tee "$out/call1/tests2.txt"
cd "$tmp/main"  # python -m pytest puts this tree's rtpurbo first on sys.path
python3 -m pytest -q -p no:cacheprovider tests/test_ops_gpu.py -k dependent_launch | tee "$out/call3/pdl_main.txt"
