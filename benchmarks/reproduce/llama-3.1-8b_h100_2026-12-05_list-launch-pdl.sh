#!/usr/bin/env bash
# Reproduces benchmarks/results/llama-3.1-8b_h100_2026-12-05_list-launch-pdl.md on one GPU (an H100 there): the list
# attention's launch shapes with pipeline stages, the local heads' ring over the same shapes, the selecting layer step
# with the list launch patched (paired) and its kernel timelines, on the tree c7f3a8d; then the 8-layer decode at 256K
# and 512K.
#
#   bash benchmarks/reproduce/llama-3.1-8b_h100_2026-12-05_list-launch-pdl.sh OUT   # about 6 minutes, from a git clone
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT}")
res=$(pwd)/benchmarks/results/llama-3.1-8b_h100_2026-12-05_list-launch-pdl
mkdir -p "$out/call1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive c7f3a8d | tar -x -C "$tmp"
cd "$tmp"
OUT="$out/call1" python3 "$res/call1/list_stages.py" | tee "$out/call1/stdout.txt"
python3 -m rtpurbo.cli bench model --cuda-graph --lengths 8K --decode-lengths 256K 512K --index-logit-std 2.56 \
  --no-flash-ttft --repeats 1 --out "$out/call1/e2e.jsonl" | tee "$out/call1/e2e.txt"
