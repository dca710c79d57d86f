#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_cpu_2026-12-04_prefill-scoring.md: the shipped SmolLM2 adapter with its
# retrieval heads on the sparse prefill, key blocks scored by mean-pooled indexer vectors (pooled) or by the
# indexer's probability mass per block (mass): perplexity against the same adapter's dense prefill, and the share
# of the answer's key blocks each scoring keeps for the question.
#
#   bash benchmarks/reproduce/smollm2-135m_cpu_2026-12-04_prefill-scoring.sh EVAL100 OUT   # 2 CPU cores, ~1 h
#
# EVAL100: `rtpurbo eval --prepare-only --lengths 4096 8192 --samples 100 --ppl-windows 12` data (the 12 windows
# of 8K tokens are the perplexity set of every SmolLM2 results file of 2026-12-03/04).
set -euo pipefail
data=${1:?EVAL100}; out=${2:?OUT}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
python3 "$here/benchmarks/sparse_prefill_perplexity.py" --data "$data" --threads 2 \
  --variants dense pooled@0.9 mass@0.9 mass@0.8 mass@0.7 pooled@0.8 --out "$out/perplexity.json"
for length in 8192 4096; do
  python3 "$here/benchmarks/sparse_prefill_needle_recall.py" --data "$data" --lengths $length --samples 4 --threads 2 \
    --out "$out/needle_recall_$((length / 1024))k.json"
done
